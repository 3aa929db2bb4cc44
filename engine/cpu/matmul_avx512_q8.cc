// AVX-512 + VNNI kernels for Q8_0 and Q4_0 weights (the k-quants are in
// matmul_avx512_k.cc): vpdpbusd (u8 x s8 -> s32) on whole 32-blocks.
//
// Intrinsics, not Highway: Highway 1.0.3 (Debian bookworm) has no int8 dot
// product. Its int8 route, the same 4 x 4 tiles with the quants widened to
// int16 for vpmaddwd (ReorderWidenMulAccumulate), measured Q8_0 prefill-512
// 367 / 374 ms against 65 / 69 ms for these kernels, decode equal
// (memory-bound); BENCHMARKS.md "One SIMD story".
//
// Every other include comes before x86_target_begin-inl.h (see there).
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"

#define SINKSERVE_X86_TARGET SINKSERVE_X86_AVX512
#include "engine/cpu/x86_target_begin-inl.h"
#if SINKSERVE_X86_KERNELS

namespace sinkserve::engine::matmul_internal {
namespace {

#include "engine/cpu/matmul_kernels-inl.h"

inline float F16(uint16_t h) { return _cvtsh_ss(h); }

inline __m512i Load2x32(const void* lo, const void* hi) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(lo))),
      _mm256_loadu_si256(static_cast<const __m256i*>(hi)), 1);
}

// ------------------------------------------------------- Q8_0 and Q4_0
// Sixteen rows per tile, one per vector lane: each block of the 16 rows is
// transposed in registers so that v[k] holds bytes 4k .. 4k + 3 of every
// row, and vpdpbusd with the token's dword k broadcast sums whole blocks per
// lane. Per block and token that is 8 vpdpbusd and one scale FMA for 16
// rows, with no horizontal sums; the transpose is paid once per block and
// shared by all tokens of the tile.
//
// vpdpbusd wants unsigned weights: Q8_0 quants get +128 (xor 0x80), Q4_0
// nibbles are used as stored (q + 8). The accumulators start at
// -bias * sum(x) to take the offset back out.

// 32-bit lanes of a, b interleaved as ggml's 8 x 8 transpose needs them.
inline void Transpose4x4Dwords(const __m512i in[4], __m512i out[4]) {
  const __m512i t0 = _mm512_unpacklo_epi32(in[0], in[1]);  // a0 b0 a1 b1 per 128
  const __m512i t1 = _mm512_unpackhi_epi32(in[0], in[1]);  // a2 b2 a3 b3
  const __m512i t2 = _mm512_unpacklo_epi32(in[2], in[3]);  // c0 d0 c1 d1
  const __m512i t3 = _mm512_unpackhi_epi32(in[2], in[3]);  // c2 d2 c3 d3
  out[0] = _mm512_unpacklo_epi64(t0, t2);                  // a0 b0 c0 d0
  out[1] = _mm512_unpackhi_epi64(t0, t2);                  // a1 b1 c1 d1
  out[2] = _mm512_unpacklo_epi64(t1, t3);                  // a2 b2 c2 d2
  out[3] = _mm512_unpackhi_epi64(t1, t3);                  // a3 b3 c3 d3
}

struct Q8_0Rows {
  using Block = BlockQ8_0;
  static constexpr int kBiasShift = 7;  // quants + 128
  // rows[i]: block b of row i. v[k] lane i = quant bytes 4k .. 4k + 3 of row i.
  static void Load(const Block* const rows[16], __m512i v[8]) {
    __m512i z[8];
    SINKSERVE_UNROLL
    for (int j = 0; j < 8; ++j) z[j] = Load2x32(rows[j]->qs, rows[j + 8]->qs);
    // Per 256-bit half: rows j (j + 8), dwords 0..3 in the low 128 bits
    // and 4..7 in the high ones; transpose each 4 x 4 group of rows.
    __m512i u[8];
    Transpose4x4Dwords(z, u);      // u[m]: dword m / m + 4 of rows 0-3 / 8-11
    Transpose4x4Dwords(z + 4, u + 4);  //      same for rows 4-7 / 12-15
    const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    const __m512i bias = _mm512_set1_epi8(-128);
    SINKSERVE_UNROLL
    for (int m = 0; m < 4; ++m) {
      v[m] = _mm512_xor_si512(_mm512_permutex2var_epi64(u[m], lo, u[m + 4]), bias);
      v[m + 4] = _mm512_xor_si512(_mm512_permutex2var_epi64(u[m], hi, u[m + 4]), bias);
    }
  }
};

struct Q4_0Rows {
  using Block = BlockQ4_0;
  static constexpr int kBiasShift = 3;  // nibbles are q + 8
  static void Load(const Block* const rows[16], __m512i v[8]) {
    // z[j] 128-bit lane L = the 16 quant bytes of row j + 4 L.
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    __m512i lo[4], hi[4];
    SINKSERVE_UNROLL
    for (int j = 0; j < 4; ++j) {
      const __m512i z = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_set_m128i(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[j + 4]->qs)),
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[j]->qs)))),
          _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[j + 12]->qs)),
                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[j + 8]->qs))),
          1);
      lo[j] = _mm512_and_si512(z, low4);                          // values 0 .. 15
      hi[j] = _mm512_and_si512(_mm512_srli_epi16(z, 4), low4);    // values 16 .. 31
    }
    Transpose4x4Dwords(lo, v);
    Transpose4x4Dwords(hi, v + 4);
  }
};

// One block of a 16-row tile as the dot products consume it: quants
// transposed (v[k] lane i = bytes 4k .. 4k + 3 of row i) and the 16 scales.
struct PackedBlock {
  __m512i v[8];
  __m512 dw;
};

// Reads blocks of a 16-row tile straight from W. Lanes past `rows` repeat
// the last row (and are never stored), so a partial tile reads nothing
// outside the matrix.
template <class W>
class TileReader {
 public:
  using Block = typename W::Block;
  TileReader(const WeightMatrix& w, int64_t r, int rows, int64_t nb)
      : tile_(w.data + r * w.row_bytes), pf_(w, r, rows, nb) {
    alignas(64) int32_t offsets[16];
    SINKSERVE_UNROLL
    for (int i = 0; i < 16; ++i) {
      const int64_t ri = i < rows ? i : rows - 1;
      row_[i] = reinterpret_cast<const Block*>(tile_ + ri * w.row_bytes);
      offsets[i] = static_cast<int32_t>(ri * w.row_bytes);
    }
    vindex_ = _mm512_load_si512(offsets);
  }
  // Blocks must be read in order, b = 0, 1, ... (for the prefetcher).
  void Read(int64_t b, __m512i v[8], __m512* dw) {
    pf_.Step();
    const Block* blocks[16];
    SINKSERVE_UNROLL
    for (int i = 0; i < 16; ++i) blocks[i] = row_[i] + b;
    W::Load(blocks, v);
    // The F16 scales: a dword gather from each block start.
    *dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(
        _mm512_i32gather_epi32(vindex_, tile_ + b * sizeof(Block), 1)));
  }

 private:
  const uint8_t* tile_;
  const Block* row_[16];
  __m512i vindex_;
  NextTilePrefetcher pf_;
};

// y[(t + j) * ldy + r + i] for the tile's rows i < rows and tokens j < T;
// read(b, v, &dw) supplies block b. The same operations in the same order
// whatever the source, T or rows: results are bit-identical across them.
template <class W, int T, class Read>
void DotTile(const Activations& a, int64_t r, int rows, int64_t t, float* y, int64_t ldy,
             Read&& read) {
  const int64_t nb = a.cols / 32;
  __m512 acc[T];
  SINKSERVE_UNROLL
  for (int j = 0; j < T; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i v[8];
    __m512 dw;
    read(b, v, &dw);
    SINKSERVE_UNROLL
    for (int j = 0; j < T; ++j) {
      const int64_t xb = (t + j) * nb + b;
      const int32_t* x = reinterpret_cast<const int32_t*>(a.qs + xb * 32);
      __m512i dot = _mm512_slli_epi32(_mm512_set1_epi32(a.neg_sums[xb]), W::kBiasShift);
      SINKSERVE_UNROLL
      for (int k = 0; k < 8; ++k) dot = _mm512_dpbusd_epi32(dot, v[k], _mm512_set1_epi32(x[k]));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(a.d[xb])),
                               acc[j]);
    }
  }
  const __mmask16 store = static_cast<__mmask16>((1u << rows) - 1);
  SINKSERVE_UNROLL
  for (int j = 0; j < T; ++j) _mm512_mask_storeu_ps(y + (t + j) * ldy + r, store, acc[j]);
}

// Few tokens (decode): transpose on the fly, as each block is used once.
template <class W>
struct Q8RowsKernel {
  static constexpr int kRows = 16;
  static constexpr bool kRaggedRows = true;
  static constexpr int kTokens = 8;
  template <int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int rows, int64_t t,
                   float* y, int64_t ldy) {
    TileReader<W> reader(w, r, rows, a.cols / 32);
    DotTile<W, T>(a, r, rows, t, y, ldy,
                  [&](int64_t b, __m512i v[8], __m512* dw) { reader.Read(b, v, dw); });
  }
};

// Bytes of packed tiles a thread keeps (in L2) while every token tile of a
// batch passes over them.
constexpr int64_t kPackBytes = 256 * 1024;

template <class W, int T>
void PackedTiles(const Activations& a, const PackedBlock* packed, int64_t r0, int64_t r1,
                 int64_t t, float* y, int64_t ldy) {
  const int64_t nb = a.cols / 32;
  for (int64_t r = r0; r < r1; r += 16, packed += nb) {
    DotTile<W, T>(a, r, static_cast<int>(MinI64(16, r1 - r)), t, y, ldy,
                  [&](int64_t b, __m512i v[8], __m512* dw) {
                    SINKSERVE_UNROLL
                    for (int k = 0; k < 8; ++k) v[k] = _mm512_load_si512(&packed[b].v[k]);
                    *dw = _mm512_load_ps(&packed[b].dw);
                  });
  }
}

// Batches transpose each 16-row tile once into a per-thread buffer and run
// every token tile over the packed copy: the transpose and gather cost is
// then shared by the whole batch instead of 8 tokens.
template <class W>
void GemmQ8(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1, int64_t t0,
            int64_t t1, float* y, int64_t ldy) {
  constexpr int kT = Q8RowsKernel<W>::kTokens;
  if (t1 - t0 <= kT) {
    RunGemm<Q8RowsKernel<W>>(w, a, r0, r1, t0, t1, y, ldy);
    return;
  }
  const int64_t nb = a.cols / 32;
  const int64_t tile_bytes = nb * static_cast<int64_t>(sizeof(PackedBlock));
  const int64_t tiles = kPackBytes / tile_bytes > 1 ? kPackBytes / tile_bytes : 1;
  thread_local std::vector<uint8_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < tiles * tile_bytes + 64) {
    buffer.resize(tiles * tile_bytes + 64);
  }
  PackedBlock* packed = reinterpret_cast<PackedBlock*>(
      (reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t{63});
  for (int64_t rb = r0; rb < r1; rb += 16 * tiles) {
    const int64_t rb_end = MinI64(r1, rb + 16 * tiles);
    PackedBlock* p = packed;
    for (int64_t r = rb; r < rb_end; r += 16, p += nb) {
      TileReader<W> reader(w, r, static_cast<int>(MinI64(16, rb_end - r)), nb);
      for (int64_t b = 0; b < nb; ++b) reader.Read(b, p[b].v, &p[b].dw);
    }
    for (int64_t t = t0; t < t1; t += kT) {
      switch (MinI64(kT, t1 - t)) {
        case 1: PackedTiles<W, 1>(a, packed, rb, rb_end, t, y, ldy); break;
        case 2: PackedTiles<W, 2>(a, packed, rb, rb_end, t, y, ldy); break;
        case 3: PackedTiles<W, 3>(a, packed, rb, rb_end, t, y, ldy); break;
        case 4: PackedTiles<W, 4>(a, packed, rb, rb_end, t, y, ldy); break;
        case 5: PackedTiles<W, 5>(a, packed, rb, rb_end, t, y, ldy); break;
        case 6: PackedTiles<W, 6>(a, packed, rb, rb_end, t, y, ldy); break;
        case 7: PackedTiles<W, 7>(a, packed, rb, rb_end, t, y, ldy); break;
        default: PackedTiles<W, 8>(a, packed, rb, rb_end, t, y, ldy); break;
      }
    }
  }
}

}  // namespace

void GemmQ8_0Avx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy) {
  GemmQ8<Q8_0Rows>(w, a, r0, r1, t0, t1, y, ldy);
}

void GemmQ4_0Avx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy) {
  GemmQ8<Q4_0Rows>(w, a, r0, r1, t0, t1, y, ldy);
}

}  // namespace sinkserve::engine::matmul_internal

#endif  // SINKSERVE_X86_KERNELS
#include "engine/cpu/x86_target_end-inl.h"
