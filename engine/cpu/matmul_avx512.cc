// AVX-512 matmul kernels (F, BW, VL, DQ + VNNI: Ice Lake, Sapphire Rapids,
// Zen 4 and later): floats and activation quantization here; Q8_0 / Q4_0 in
// matmul_avx512_q8.cc, the k-quants in matmul_avx512_k.cc.
//
// All includes come before the target pragma so that inline functions of
// other headers keep their baseline code (see matmul_internal.h).
#include <cstdint>
#include <cstring>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which its
// own -Wuninitialized flags (GCC bug 105593); the warning must be off where
// the intrinsics headers are read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#define SINKSERVE_AVX512_KERNELS 1
#endif

#if SINKSERVE_AVX512_KERNELS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target( \
    "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif

#include "engine/cpu/matmul_kernels-inl.h"

namespace sinkserve::engine::matmul_internal {
namespace {

inline float F16(uint16_t h) { return _cvtsh_ss(h); }


// ---------------------------------------------------------------- floats
struct LoadF32 {
  using T = float;
  static __m512 Load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 Tail(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
  using T = uint16_t;
  static __m512 Load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 Tail(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct LoadBF16 {
  using T = uint16_t;
  static __m512 Widen(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
  static __m512 Load(const uint16_t* p) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static __m512 Tail(const uint16_t* p, __mmask16 m) {
    return Widen(_mm256_maskz_loadu_epi16(m, p));
  }
};

// Intrinsics rather than Highway (which matmul.cc and vec_ops.cc use): the
// same tiles written in Highway 1.0.3 measured 7-14% slower on f32 (AVX-512
// decode 3.28 vs 3.82 ms, AVX2 3.99 vs 4.34 ms, prefill-512 231 vs 254 ms;
// BENCHMARKS.md "One SIMD story"), so this kernel stays hand-written.
// R rows x T tokens of FMAs, 16 columns at a time; F16/BF16 weights are
// widened once per row and used for all T tokens.
template <class L>
struct FloatKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 4;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    using WT = typename L::T;
    const int64_t cols = a.cols;
    const WT* wr[R];
    const float* x[T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i) wr[i] = reinterpret_cast<const WT*>(w.data + (r + i) * w.row_bytes);
    SINKSERVE_UNROLL
    for (int j = 0; j < T; ++j) x[j] = a.f32 + (t + j) * cols;
    __m512 acc[R][T];
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
    NextTilePrefetcher pf(w, r, R, cols / 16);
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
      pf.Step();
      __m512 xv[T];
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = _mm512_loadu_ps(x[j] + c);
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const __m512 wv = L::Load(wr[i] + c);
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
      }
    }
    if (c < cols) {
      const __mmask16 m = static_cast<__mmask16>((1u << (cols - c)) - 1);
      __m512 xv[T];
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) xv[j] = _mm512_maskz_loadu_ps(m, x[j] + c);
      SINKSERVE_UNROLL
      for (int i = 0; i < R; ++i) {
        const __m512 wv = L::Tail(wr[i] + c, m);
        SINKSERVE_UNROLL
        for (int j = 0; j < T; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
      }
    }
    SINKSERVE_UNROLL
    for (int i = 0; i < R; ++i)
      SINKSERVE_UNROLL
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
};

// ------------------------------------------------------- quantization
// x * id rounded half away from zero, as std::round in QuantizeRowQ8_0.
inline __m512i RoundAway(__m512 v) {
  const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __mmask16 up =
      _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
  const __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f),
                                  _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));  // copysign(1, v)
  return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

void QuantizeQ8_0(const float* x, int64_t cols, int8_t* qs, float* d, int32_t* neg_sums) {
  for (int64_t b = 0; b < cols / kQK8_0; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * b);
    const __m512 v1 = _mm512_loadu_ps(x + 32 * b + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    d[b] = _cvtsh_ss(_cvtss_sh(dd, _MM_FROUND_TO_NEAREST_INT));
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = RoundAway(_mm512_mul_ps(v0, vid));
    const __m512i q1 = RoundAway(_mm512_mul_ps(v1, vid));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 32 * b), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
    neg_sums[b] = -_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
}

void QuantizeQ8_K(const float* x, int64_t cols, int8_t* qs, float* d, int16_t* bsums,
                  float* dsums) {
  for (int64_t b = 0; b < cols / kQK_K; ++b) {
    const float* xb = x + b * kQK_K;
    __m512 vmax = _mm512_setzero_ps();
    for (int k = 0; k < kQK_K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xb + k)));
    const float amax = _mm512_reduce_max_ps(vmax);
    int8_t* q = qs + b * kQK_K;
    int16_t* bs = bsums + b * (kQK_K / 16);
    if (amax == 0.0f) {
      d[b] = 0.0f;
      std::memset(q, 0, kQK_K);
      std::memset(bs, 0, kQK_K / 16 * sizeof(int16_t));
      for (int k = 0; k < kQK_K / 32; ++k) dsums[b * (kQK_K / 32) + k] = 0.0f;
      continue;
    }
    float max = 0.0f;  // the first value of largest magnitude, sign included
    for (int k = 0; k < kQK_K; ++k) {
      if (xb[k] == amax || xb[k] == -amax) {
        max = xb[k];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m512 vs = _mm512_set1_ps(iscale);
    for (int k = 0; k < kQK_K / 16; ++k) {
      // Round to nearest even (the MXCSR default), as ggml's nearest_int.
      const __m512i v = _mm512_min_epi32(
          _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * k), vs)),
          _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * k), _mm512_cvtepi32_epi8(v));
      bs[k] = static_cast<int16_t>(_mm512_reduce_add_epi32(v));
    }
    d[b] = 1.0f / iscale;
    for (int k = 0; k < kQK_K / 32; ++k) {
      dsums[b * (kQK_K / 32) + k] = d[b] * static_cast<float>(bs[2 * k] + bs[2 * k + 1]);
    }
  }
}

}  // namespace

const KernelSet* Avx512Kernels() {
  static const KernelSet kSet = {
      "avx512",
      8,
      QuantizeQ8_0,
      QuantizeQ8_K,
      RunGemm<FloatKernel<LoadF32>>,
      RunGemm<FloatKernel<LoadF16>>,
      RunGemm<FloatKernel<LoadBF16>>,
      GemmQ8_0Avx512,  // matmul_avx512_q8.cc
      GemmQ4_0Avx512,
      GemmQ4_KAvx512,  // matmul_avx512_k.cc
      GemmQ6_KAvx512,
  };
  return &kSet;
}

}  // namespace sinkserve::engine::matmul_internal

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // !SINKSERVE_AVX512_KERNELS

namespace sinkserve::engine::matmul_internal {
const KernelSet* Avx512Kernels() { return nullptr; }
}  // namespace sinkserve::engine::matmul_internal

#endif  // SINKSERVE_AVX512_KERNELS
