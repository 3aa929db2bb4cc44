// The AVX-512 (F, BW, VL, DQ + VNNI: Ice Lake, Sapphire Rapids, Zen 4 and
// later) products of the quantized types: Q8_0 / Q4_0 in matmul_avx512_q8.cc,
// the k-quants in matmul_avx512_k.cc. The float types and the activation
// quantizers are Highway (matmul_float.cc).
//
// No target pragma: this file only names the kernels, so it runs on any CPU.
#include "engine/cpu/matmul_internal.h"

namespace sinkserve::engine::matmul_internal {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
const QuantKernels* Avx512QuantKernels() {
  // Up to 8 tokens per tile: the Q8_0 / Q4_0 batch path packs 8.
  static const QuantKernels kKernels = {
      8, GemmQ8_0Avx512, GemmQ4_0Avx512, GemmQ4_KAvx512, GemmQ6_KAvx512,
  };
  return &kKernels;
}
#else
const QuantKernels* Avx512QuantKernels() { return nullptr; }
#endif

}  // namespace sinkserve::engine::matmul_internal
