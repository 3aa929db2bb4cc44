// Loop nest shared by the per-instruction-set matmul kernels.
//
// Included by matmul_{scalar,float,avx2,avx512_q8,avx512_k}.cc AFTER their
// `#pragma GCC target` (or HWY_BEFORE_NAMESPACE), INSIDE a namespace of
// their own that is anonymous (or, in matmul_float.cc, per Highway target
// and anonymous), so everything here is compiled once per instruction set and
// those copies never meet at link time. Hence no namespace here, and no
// include guard: matmul_float.cc includes it once per target.
//
// A kernel class K provides
//   static constexpr int kRows;    // rows per micro-kernel tile
//   static constexpr int kTokens;  // max tokens per micro-kernel tile (<= 8)
//   template <int R, int T>
//   static void Tile(const WeightMatrix& w, const Activations& a,
//                    int64_t r, int64_t t, float* y, int64_t ldy);
// computing the R x T outputs y[(t + j) * ldy + r + i], called with
// R = kRows and, for the rows left over, R = 1. A kernel whose tile keeps one
// row per vector lane (so that a partial tile costs what a full one does)
// sets kRaggedRows and provides instead
//   template <int T>
//   static void Tile(const WeightMatrix& w, const Activations& a, int64_t r,
//                    int rows, int64_t t, float* y, int64_t ldy);
// for 1 <= rows <= kRows. An output must come out bit-identical whichever
// tile computes it (any R, rows or T), so that results depend neither on how
// threads split the rows nor on the batch a token comes in.

// Fully unrolls a loop over tile rows / tokens, so that per-row and
// per-token vectors stay in registers (GCC otherwise keeps such arrays on
// the stack, putting a store and reload in every accumulator chain).
#ifndef SINKSERVE_UNROLL
#define SINKSERVE_UNROLL _Pragma("GCC unroll 16")
#endif

// Bytes of W kept hot while a block of rows meets every token tile: about
// half of a small (256 KiB) L2, so the activations fit beside it.
constexpr int64_t kRowBlockBytes = 160 * 1024;

inline int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

template <class K, int T>
void RowsForTokenTile(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                      int64_t t, float* y, int64_t ldy) {
  int64_t r = r0;
  if constexpr (K::kRaggedRows) {
    for (; r < r1; r += K::kRows) {
      K::template Tile<T>(w, a, r, static_cast<int>(MinI64(K::kRows, r1 - r)), t, y, ldy);
    }
  } else {
    for (; r + K::kRows <= r1; r += K::kRows) K::template Tile<K::kRows, T>(w, a, r, t, y, ldy);
    for (; r < r1; ++r) K::template Tile<1, T>(w, a, r, t, y, ldy);
  }
}

// Rows in blocks that stay in cache while every token tile passes over them:
// W streams from memory once, each activation tile is re-read from cache
// once per row block. With one token tile (decode) this is a plain stream.
template <class K>
void RunGemm(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1, int64_t t0,
             int64_t t1, float* y, int64_t ldy) {
  int64_t block_rows = kRowBlockBytes / (w.row_bytes > 0 ? w.row_bytes : 1);
  block_rows = block_rows < K::kRows ? K::kRows : block_rows / K::kRows * K::kRows;
  for (int64_t rb = r0; rb < r1; rb += block_rows) {
    const int64_t rb_end = MinI64(r1, rb + block_rows);
    for (int64_t t = t0; t < t1; t += K::kTokens) {
      switch (MinI64(K::kTokens, t1 - t)) {
        case 1:
          RowsForTokenTile<K, 1>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 2:
          if constexpr (K::kTokens >= 2) RowsForTokenTile<K, 2>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 3:
          if constexpr (K::kTokens >= 3) RowsForTokenTile<K, 3>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 4:
          if constexpr (K::kTokens >= 4) RowsForTokenTile<K, 4>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 5:
          if constexpr (K::kTokens >= 5) RowsForTokenTile<K, 5>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 6:
          if constexpr (K::kTokens >= 6) RowsForTokenTile<K, 6>(w, a, rb, rb_end, t, y, ldy);
          break;
        case 7:
          if constexpr (K::kTokens >= 7) RowsForTokenTile<K, 7>(w, a, rb, rb_end, t, y, ldy);
          break;
        default:
          if constexpr (K::kTokens >= 8) RowsForTokenTile<K, 8>(w, a, rb, rb_end, t, y, ldy);
          break;
      }
    }
  }
}

// Prefetches the next tile's rows (one contiguous region) while the current
// tile runs, spread evenly over its steps. A tile reads its rows side by
// side in short runs (a Q4_0 row of 4096 values is 2.3 KB), which the
// hardware prefetchers follow poorly: one linear stream a whole tile ahead
// doubles the bandwidth of the k-quants. Rows of kLongRowBytes or more are
// left to the hardware, which does better alone there. The lines go to L2
// (a tile ahead can be 70 KB, more than L1 holds). Prefetches past the end
// of the matrix are harmless (they never fault).
constexpr int64_t kLongRowBytes = 8192;

class NextTilePrefetcher {
 public:
  // The tile is rows [r, r + rows) of w; `steps` calls to Step follow.
  NextTilePrefetcher(const WeightMatrix& w, int64_t r, int rows, int64_t steps)
      : next_(w.data + (r + rows) * w.row_bytes),
        end_(w.row_bytes < kLongRowBytes ? next_ + rows * w.row_bytes : next_),
        per_step_(steps > 0 ? (end_ - next_ + steps - 1) / steps : 0),
        until_(next_) {}
  // Call once per step (steps times in all).
  void Step() {
    until_ += per_step_;
    for (; next_ < until_ && next_ < end_; next_ += 64) __builtin_prefetch(next_, 0, 2);
  }

 private:
  const uint8_t* next_;
  const uint8_t* end_;
  int64_t per_step_;
  const uint8_t* until_;
};

// ggml's unpacking of a Q4_K block's 12 scale bytes: out[0..7] are the
// 6-bit sub-block scales, out[8..15] the 6-bit mins (get_scale_min_k4).
inline void UnpackQ4KScales(const uint8_t* packed, uint8_t out[16]) {
  constexpr uint32_t kMask1 = 0x3f3f3f3f;
  constexpr uint32_t kMask2 = 0x0f0f0f0f;
  constexpr uint32_t kMask3 = 0x03030303;
  uint32_t u[4];
  __builtin_memcpy(u, packed, 12);
  u[3] = ((u[2] >> 4) & kMask2) | (((u[1] >> 6) & kMask3) << 4);
  const uint32_t mins_lo = u[1] & kMask1;
  u[1] = (u[2] & kMask2) | (((u[0] >> 6) & kMask3) << 4);
  u[2] = mins_lo;
  u[0] &= kMask1;
  __builtin_memcpy(out, u, 16);
}
