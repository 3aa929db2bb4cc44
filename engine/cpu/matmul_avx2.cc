// AVX2 + FMA + F16C matmul kernels of the quantized types (Haswell / Zen 1
// and later); the float types and the activation quantizers are Highway
// (matmul_float.cc). Without VNNI, integer dot products go through vpmaddubsw
// (u8 x s8 -> s16 pairs) and vpmaddwd, as ggml does; 16 vector registers
// allow 4 rows x 2 tokens.
//
// Intrinsics, not Highway: Highway 1.0.3 has no vpmaddubsw. The same Q8_0
// tiles in Highway, quants widened to int16 for vpmaddwd, measured prefill-512
// 386 / 412 ms against 347 / 367 ms here (11% slower), decode equal;
// BENCHMARKS.md "One SIMD story".
//
// Every other include comes before x86_target_begin-inl.h (see there).
#include <cstdint>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"

#define SINKSERVE_X86_TARGET SINKSERVE_X86_AVX2
#include "engine/cpu/x86_target_begin-inl.h"
#if SINKSERVE_X86_KERNELS

namespace sinkserve::engine::matmul_internal {
namespace {

#include "engine/cpu/matmul_kernels-inl.h"

inline float F16(uint16_t h) { return _cvtsh_ss(h); }

inline float Hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

inline __m256i Load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// ------------------------------------------------------- Q8_0 and Q4_0
// One 32-block per vector. Q8_0 uses ggml's sign trick (|w| x sign(w) * x
// keeps vpmaddubsw from saturating); Q4_0 multiplies the stored nibbles
// (0..15) and removes 8 * sum(x) through the activations' negated sums.
struct Q8_0Weights {
  using Block = BlockQ8_0;
  static constexpr bool kNibbles = false;
  static __m256i Quants(const Block& b) { return Load256(b.qs); }
};
struct Q4_0Weights {
  using Block = BlockQ4_0;
  static constexpr bool kNibbles = true;
  static __m256i Quants(const Block& b) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
  }
};

template <class W>
struct Q8Kernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 2;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    using Block = typename W::Block;
    const int64_t nb = a.cols / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    const Block* wr[R];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const Block*>(w.data + (r + i) * w.row_bytes);
    __m256 acc[R][T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
    NextTilePrefetcher pf(w, r, R, nb);
    for (int64_t b = 0; b < nb; ++b) {
      pf.Step();
      __m256i xv[T];
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = Load256(a.qs + (t + j) * a.cols + 32 * b);
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const __m256i wq = W::Quants(wr[i][b]);
        const __m256i wu = W::kNibbles ? wq : _mm256_sign_epi8(wq, wq);
        const __m256 dw = _mm256_set1_ps(F16(wr[i][b].d));
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) {
          const __m256i xs = W::kNibbles ? xv[j] : _mm256_sign_epi8(xv[j], wq);
          __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xs), ones);
          const int64_t xb = (t + j) * nb + b;
          if (W::kNibbles) dot = _mm256_add_epi32(dot, _mm256_set1_epi32(a.neg_sums[xb]));
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                      _mm256_mul_ps(dw, _mm256_set1_ps(a.d[xb])), acc[i][j]);
        }
      }
    }
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = Hsum(acc[i][j]);
  }
};

// ------------------------------------------------------------ k-quants
// One row at a time inside the tile, T integer accumulators per row.
struct Q4KKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 2;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = a.cols / kQK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc[R][T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
    NextTilePrefetcher pf(w, r, R, nb);
    for (int64_t b = 0; b < nb; ++b) {
      pf.Step();
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const BlockQ4_K& blk = reinterpret_cast<const BlockQ4_K*>(w.data + (r + i) * w.row_bytes)[b];
        alignas(16) uint8_t sm[16];
        UnpackQ4KScales(blk.scales, sm);
        const __m256 mins = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                reinterpret_cast<const __m128i*>(sm + 8)))),
            _mm256_set1_ps(-F16(blk.dmin)));
        const __m256 dw = _mm256_set1_ps(F16(blk.d));
        __m256i s[T];
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) s[j] = _mm256_setzero_si256();
        SINKSERVE_UNROLL
        for (int c = 0; c < 4; ++c) {
          const __m256i raw = Load256(blk.qs + 32 * c);
          const __m256i lo = _mm256_and_si256(raw, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
          const __m256i sc_lo = _mm256_set1_epi16(sm[2 * c]);
          const __m256i sc_hi = _mm256_set1_epi16(sm[2 * c + 1]);
          SINKSERVE_UNROLL
          for (int j = 0; j < T; ++j) {
            const int8_t* x = a.qs + (t + j) * a.cols + b * kQK_K + 64 * c;
            s[j] = _mm256_add_epi32(
                s[j], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, Load256(x)), sc_lo));
            s[j] = _mm256_add_epi32(
                s[j], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, Load256(x + 32)), sc_hi));
          }
        }
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) {
          const int64_t xb = (t + j) * nb + b;
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[j]),
                                      _mm256_mul_ps(dw, _mm256_set1_ps(a.d[xb])), acc[i][j]);
          acc[i][j] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(a.dsums + xb * 8), acc[i][j]);
        }
      }
    }
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = Hsum(acc[i][j]);
  }
};

// Byte shuffles that spread scales 2c, 2c + 1 over the 8 + 8 vpmaddubsw
// lanes of 32 values (two Q6_K sub-blocks of 16).
alignas(16) constexpr uint8_t kQ6ScaleShuffle[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

struct Q6KKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 2;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = a.cols / kQK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i bits01 = _mm256_set1_epi8(0x03);
    __m256 acc[R][T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
    NextTilePrefetcher pf(w, r, R, nb);
    for (int64_t b = 0; b < nb; ++b) {
      pf.Step();
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const BlockQ6_K& blk = reinterpret_cast<const BlockQ6_K*>(w.data + (r + i) * w.row_bytes)[b];
        const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        // Quants are stored +32: start at -32 * sum(scale * sum(x)) per 16.
        const __m256i neg32 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5));
        const __m256 dw = _mm256_set1_ps(F16(blk.d));
        __m256i s[T];
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) {
          s[j] = _mm256_madd_epi16(neg32, Load256(a.bsums + ((t + j) * nb + b) * 16));
        }
        SINKSERVE_UNROLL
        for (int h = 0; h < 2; ++h) {
          const __m256i ql0 = Load256(blk.ql + 64 * h);       // values l, l + 64
          const __m256i ql1 = Load256(blk.ql + 64 * h + 32);  // values l + 32, l + 96
          const __m256i qh = Load256(blk.qh + 32 * h);
          SINKSERVE_UNROLL
          for (int k = 0; k < 4; ++k) {  // 32 values from 128 h + 32 k
            const __m256i ql = (k & 1) ? ql1 : ql0;
            const __m256i lo = (k & 2) ? _mm256_srli_epi16(ql, 4) : ql;
            const __m256i hi2 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), bits01);
            const __m256i q =
                _mm256_or_si256(_mm256_and_si256(lo, low4), _mm256_slli_epi16(hi2, 4));
            const __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
                sc8, _mm_load_si128(reinterpret_cast<const __m128i*>(kQ6ScaleShuffle[4 * h + k]))));
            SINKSERVE_UNROLL
            for (int j = 0; j < T; ++j) {
              const int8_t* x = a.qs + (t + j) * a.cols + b * kQK_K + 128 * h + 32 * k;
              s[j] = _mm256_add_epi32(s[j],
                                      _mm256_madd_epi16(_mm256_maddubs_epi16(q, Load256(x)), sc));
            }
          }
        }
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) {
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[j]),
                                      _mm256_mul_ps(dw, _mm256_set1_ps(a.d[(t + j) * nb + b])),
                                      acc[i][j]);
        }
      }
    }
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = Hsum(acc[i][j]);
  }
};

}  // namespace

const QuantKernels* Avx2QuantKernels() {
  static const QuantKernels kKernels = {
      2,
      RunGemm<Q8Kernel<Q8_0Weights>>,
      RunGemm<Q8Kernel<Q4_0Weights>>,
      RunGemm<Q4KKernel>,
      RunGemm<Q6KKernel>,
  };
  return &kKernels;
}

}  // namespace sinkserve::engine::matmul_internal

#else  // !SINKSERVE_X86_KERNELS

namespace sinkserve::engine::matmul_internal {
const QuantKernels* Avx2QuantKernels() { return nullptr; }
}  // namespace sinkserve::engine::matmul_internal

#endif  // SINKSERVE_X86_KERNELS
#include "engine/cpu/x86_target_end-inl.h"
