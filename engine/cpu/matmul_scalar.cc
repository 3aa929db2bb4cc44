// Portable products of the quantized types: the fallback for CPUs without
// AVX2, and a plain statement of what the SIMD kernels compute. The float
// types and the activation quantizers come from Highway's baseline target
// (matmul_float.cc) here as on every ISA.
#include <cstdint>

#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/fp16.h"
#include "engine/gguf/quant_blocks.h"

namespace sinkserve::engine::matmul_internal {
namespace {

#include "engine/cpu/matmul_kernels-inl.h"

// Each kernel's Dot(w, a, row, token) is one output; Tile loops over pairs.
template <class Dot>
struct PairKernel {
  static constexpr int kRows = 4;
  static constexpr bool kRaggedRows = false;
  static constexpr int kTokens = 4;
  template <int R, int T>
  static void Tile(const WeightMatrix& w, const Activations& a, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    for (int i = 0; i < R; ++i) {
      const uint8_t* row = w.data + (r + i) * w.row_bytes;
      for (int j = 0; j < T; ++j) y[(t + j) * ldy + r + i] = Dot::Run(row, a, t + j);
    }
  }
};

struct DotQ8_0 {
  static float Run(const uint8_t* row, const Activations& a, int64_t t) {
    const BlockQ8_0* w = reinterpret_cast<const BlockQ8_0*>(row);
    const int64_t nb = a.cols / kQK8_0;
    const int8_t* q = a.qs + t * a.cols;
    const float* d = a.d + t * nb;
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t isum = 0;
      for (int j = 0; j < kQK8_0; ++j) isum += w[b].qs[j] * q[b * kQK8_0 + j];
      sum += static_cast<float>(isum) * (HalfToFloat(w[b].d) * d[b]);
    }
    return sum;
  }
};

struct DotQ4_0 {
  static float Run(const uint8_t* row, const Activations& a, int64_t t) {
    const BlockQ4_0* w = reinterpret_cast<const BlockQ4_0*>(row);
    const int64_t nb = a.cols / kQK4_0;
    const int8_t* q = a.qs + t * a.cols;
    const float* d = a.d + t * nb;
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t isum = 0;
      for (int j = 0; j < kQK4_0 / 2; ++j) {
        isum += ((w[b].qs[j] & 0xf) - 8) * q[b * kQK4_0 + j];
        isum += ((w[b].qs[j] >> 4) - 8) * q[b * kQK4_0 + j + kQK4_0 / 2];
      }
      sum += static_cast<float>(isum) * (HalfToFloat(w[b].d) * d[b]);
    }
    return sum;
  }
};

struct DotQ4_K {
  static float Run(const uint8_t* row, const Activations& a, int64_t t) {
    const BlockQ4_K* w = reinterpret_cast<const BlockQ4_K*>(row);
    const int64_t nb = a.cols / kQK_K;
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* q = a.qs + t * a.cols + b * kQK_K;
      const int16_t* bsums = a.bsums + (t * nb + b) * (kQK_K / 16);
      uint8_t sm[16];  // scales, then mins
      UnpackQ4KScales(w[b].scales, sm);
      int32_t dots = 0;  // sum over sub-blocks of scale * (q . x)
      int32_t mins = 0;  // sum over sub-blocks of min * sum(x)
      for (int j = 0; j < 4; ++j) {  // 64 values: low nibbles, then high
        int32_t lo = 0, hi = 0;
        for (int l = 0; l < 32; ++l) {
          lo += (w[b].qs[32 * j + l] & 0xf) * q[64 * j + l];
          hi += (w[b].qs[32 * j + l] >> 4) * q[64 * j + 32 + l];
        }
        dots += sm[2 * j] * lo + sm[2 * j + 1] * hi;
      }
      for (int j = 0; j < 8; ++j) mins += sm[8 + j] * (bsums[2 * j] + bsums[2 * j + 1]);
      const float dx = a.d[t * nb + b];
      sum += HalfToFloat(w[b].d) * dx * static_cast<float>(dots) -
             HalfToFloat(w[b].dmin) * dx * static_cast<float>(mins);
    }
    return sum;
  }
};

struct DotQ6_K {
  static float Run(const uint8_t* row, const Activations& a, int64_t t) {
    const BlockQ6_K* w = reinterpret_cast<const BlockQ6_K*>(row);
    const int64_t nb = a.cols / kQK_K;
    float sum = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const int8_t* q = a.qs + t * a.cols + b * kQK_K;
      int32_t dots = 0;
      for (int half = 0; half < 2; ++half) {
        const uint8_t* ql = w[b].ql + 64 * half;
        const uint8_t* qh = w[b].qh + 32 * half;
        const int8_t* sc = w[b].scales + 8 * half;
        const int8_t* x = q + 128 * half;
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          dots += sc[is] * q1 * x[l] + sc[is + 2] * q2 * x[l + 32] + sc[is + 4] * q3 * x[l + 64] +
                  sc[is + 6] * q4 * x[l + 96];
        }
      }
      sum += HalfToFloat(w[b].d) * a.d[t * nb + b] * static_cast<float>(dots);
    }
    return sum;
  }
};

}  // namespace

const QuantKernels* ScalarQuantKernels() {
  static const QuantKernels kKernels = {
      PairKernel<DotQ8_0>::kTokens, RunGemm<PairKernel<DotQ8_0>>, RunGemm<PairKernel<DotQ4_0>>,
      RunGemm<PairKernel<DotQ4_K>>, RunGemm<PairKernel<DotQ6_K>>,
  };
  return &kKernels;
}

}  // namespace sinkserve::engine::matmul_internal
