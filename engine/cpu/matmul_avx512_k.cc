// AVX-512 kernels for Q4_K and Q6_K weights (Q8_0 / Q4_0 are in
// matmul_avx512_q8.cc). Their sub-block scales fit a 16-bit multiply, so the
// dot products are vpmaddubsw (u8 quants x s8 activations -> s16 pairs) and
// vpdpwssd (x scale, summed into s32).
//
// Intrinsics, not Highway: Highway 1.0.3 (Debian bookworm) has neither
// vpmaddubsw nor vpdpwssd; its int8 route (widen to int16, then vpmaddwd)
// measured 5.5x slower than VNNI on Q8_0 prefill (BENCHMARKS.md "One SIMD
// story").
//
// Every other include comes before x86_target_begin-inl.h (see there).
#include <cstdint>
#include <cstring>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"

#define SINKSERVE_X86_TARGET SINKSERVE_X86_AVX512
#include "engine/cpu/x86_target_begin-inl.h"
#if SINKSERVE_X86_KERNELS

namespace sinkserve::engine::matmul_internal {
namespace {

#include "engine/cpu/matmul_kernels-inl.h"

inline float F16(uint16_t h) { return _cvtsh_ss(h); }

// vpermw indices: chunk c of 64 values spans sub-blocks 2c, 2c + 1 (Q4_K, 32
// each) or 4c .. 4c + 3 (Q6_K, 16 each); lane k of a vpmaddubsw result holds
// values 2k, 2k + 1.
inline __m512i ScaleIndex(int first, int per_sub) {
  alignas(64) int16_t idx[32];
  for (int k = 0; k < 32; ++k) idx[k] = static_cast<int16_t>(first + 2 * k / per_sub);
  return _mm512_load_si512(idx);
}

// One row's super-block, decoded for the dot products: everything that does
// not depend on the token. (Decoding a row block once for a whole batch
// measured no faster: the vpmaddubsw + vpdpwssd pairs are the bottleneck,
// two multiply-port ops per 64 products.)
struct KRow {
  __m512i q[4];   // 64 unsigned quants each, in the activations' order
  __m512i sc[4];  // their 16-bit scales, one per vpmaddubsw lane
  __m512 d;       // d, broadcast
  __m512 mins;    // Q4_K: -dmin * m per 32-block in lanes 0-7, else 0
  __m512i neg32;  // Q6_K: -32 * scale per 16-block in 16-bit lanes 0-15
};

struct Q4K {
  using Block = BlockQ4_K;
  static void Decode(const Block& blk, KRow* k) {
    alignas(16) uint8_t sm[16];  // 8 scales, 8 mins
    UnpackQ4KScales(blk.scales, sm);
    const __m512i scales = _mm512_castsi128_si512(
        _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm))));
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    SINKSERVE_UNROLL
    for (int c = 0; c < 4; ++c) {
      // Low nibbles of 32 bytes are values 64c .. 64c + 31, high ones the
      // next 32.
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * c));
      k->q[c] = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1), low4);
      k->sc[c] = _mm512_permutexvar_epi16(ScaleIndex(2 * c, 32), scales);
    }
    k->d = _mm512_set1_ps(F16(blk.d));
    // -dmin * m pairs with the activations' d * sum(x) per 32-block.
    k->mins = _mm512_zextps256_ps512(_mm256_mul_ps(
        _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm + 8)))),
        _mm256_set1_ps(-F16(blk.dmin))));
    k->neg32 = _mm512_setzero_si512();
  }
  static __m512 Dot(const KRow& k, const Activations& a, int64_t xb, __m512 acc) {
    const int8_t* x = a.qs + xb * kQK_K;
    __m512i s = _mm512_setzero_si512();
    SINKSERVE_UNROLL
    for (int c = 0; c < 4; ++c) {
      s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(k.q[c], _mm512_loadu_si512(x + 64 * c)),
                              k.sc[c]);
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(k.d, _mm512_set1_ps(a.d[xb])), acc);
    return _mm512_fmadd_ps(k.mins, _mm512_zextps256_ps512(_mm256_loadu_ps(a.dsums + xb * 8)),
                           acc);
  }
};

struct Q6K {
  using Block = BlockQ6_K;
  static void Decode(const Block& blk, KRow* k) {
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)));
    const __m512i scales = _mm512_castsi256_si512(sc16);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    SINKSERVE_UNROLL
    for (int h = 0; h < 2; ++h) {
      // Bytes 0..31 of ql hold values l and l + 64, bytes 32..63 values
      // l + 32 and l + 96 (low / high nibble); qh byte l holds the top two
      // bits of all four, at bits 0, 2, 4, 6.
      const __m512i ql = _mm512_loadu_si512(blk.ql + 64 * h);
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
      const __m512i qhz =
          _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
      k->q[2 * h] = _mm512_or_si512(
          _mm512_and_si512(ql, low4),
          _mm512_slli_epi16(_mm512_and_si512(qhz, _mm512_set1_epi8(0x03)), 4));
      k->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                        _mm512_and_si512(qhz, _mm512_set1_epi8(0x30)));
      k->sc[2 * h] = _mm512_permutexvar_epi16(ScaleIndex(8 * h, 16), scales);
      k->sc[2 * h + 1] = _mm512_permutexvar_epi16(ScaleIndex(8 * h + 4, 16), scales);
    }
    k->d = _mm512_set1_ps(F16(blk.d));
    k->mins = _mm512_setzero_ps();
    // Quants are stored + 32: the sums start at -32 * sum(scale * sum(x)).
    k->neg32 = _mm512_castsi256_si512(
        _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5)));
  }
  static __m512 Dot(const KRow& k, const Activations& a, int64_t xb, __m512 acc) {
    const int8_t* x = a.qs + xb * kQK_K;
    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsums + xb * 16));
    __m512i s = _mm512_zextsi256_si512(_mm256_madd_epi16(_mm512_castsi512_si256(k.neg32), bsums));
    SINKSERVE_UNROLL
    for (int c = 0; c < 4; ++c) {
      s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(k.q[c], _mm512_loadu_si512(x + 64 * c)),
                              k.sc[c]);
    }
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(k.d, _mm512_set1_ps(a.d[xb])),
                           acc);
  }
};

// R rows x T tokens, row by row within a super-block (a decoded row is ~10
// vectors; T of them would not fit the registers).
template <int R, int T, class KQ, class RowAt>
void KTile(const Activations& a, int64_t r, int64_t t, float* y, int64_t ldy, RowAt&& row_at) {
  const int64_t nb = a.cols / kQK_K;
  __m512 acc[R][T];
  SINKSERVE_UNROLL
  for (int i = 0; i < R; ++i) {
    SINKSERVE_UNROLL
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) {
      const KRow& k = row_at(i, b);
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = KQ::Dot(k, a, (t + j) * nb + b, acc[i][j]);
    }
  }
  SINKSERVE_UNROLL
  for (int i = 0; i < R; ++i) {
    SINKSERVE_UNROLL
    for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
}

// Decodes each super-block as a row tile reaches it and uses it for up to 4
// tokens.
template <class KQ>
struct KKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 4;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    using Block = typename KQ::Block;
    NextTilePrefetcher pf(w, r, R, a.cols / kQK_K);
    KRow k;
    KTile<R, T, KQ>(a, r, t, y, ldy, [&](int i, int64_t b) -> const KRow& {
      if (i == 0) pf.Step();
      KQ::Decode(reinterpret_cast<const Block*>(w.data + (r + i) * w.row_bytes)[b], &k);
      return k;
    });
  }
};

}  // namespace

void GemmQ4_KAvx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy) {
  RunGemm<KKernel<Q4K>>(w, a, r0, r1, t0, t1, y, ldy);
}

void GemmQ6_KAvx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy) {
  RunGemm<KKernel<Q6K>>(w, a, r0, r1, t0, t1, y, ldy);
}

}  // namespace sinkserve::engine::matmul_internal

#endif  // SINKSERVE_X86_KERNELS
#include "engine/cpu/x86_target_end-inl.h"
