// Internals of MatMul shared by matmul.cc and the kernel files
// (matmul_scalar.cc, matmul_float.cc in Highway, matmul_avx2.cc and
// matmul_avx512*.cc in intrinsics). Not for use outside the matmul
// implementation and its tests.
//
// The kernel files are compiled with `#pragma GCC target`, so this header
// must stay free of inline function definitions: an inline function compiled
// for AVX-512 in one file could be the copy the linker keeps for all.
#ifndef SINKSERVE_ENGINE_CPU_MATMUL_INTERNAL_H_
#define SINKSERVE_ENGINE_CPU_MATMUL_INTERNAL_H_

#include <cstdint>

#include "engine/cpu/matmul.h"

// What the intrinsics kernel files are compiled for (through
// x86_target_begin-inl.h); CpuRuns in matmul.cc checks the same features
// before it calls them.
#define SINKSERVE_X86_AVX2 "avx2,fma,f16c,bmi2"
#define SINKSERVE_X86_AVX512 "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"

namespace sinkserve::engine::matmul_internal {

// Activations of `n` tokens in the form a weight type's kernels consume.
// Plain pointers so that kernels never construct anything.
struct Activations {
  int64_t n;
  int64_t cols;
  // F32 / F16 / BF16 weights: the caller's floats. (n, cols)
  const float* f32;
  // Q8_0 / Q4_0 / Q4_K / Q6_K weights: activations quantized per token.
  const int8_t* qs;  // (n, cols) quantized values
  const float* d;    // (n, cols / 32) Q8_0 scales (F16-rounded, as ggml
                     // stores them) or (n, cols / 256) Q8_K scales
  const int32_t* neg_sums;  // Q8_0: (n, cols / 32) -sum(qs) of each block
  const int16_t* bsums;     // Q8_K: (n, cols / 16) sum(qs) per 16
  const float* dsums;       // Q8_K: (n, cols / 32) d * sum(qs) per 32
};

// Quantizes one token's activations x (cols) to Q8_0: qs (cols), d and
// neg_sums (cols / 32). Byte-identical to QuantizeRowQ8_0 (quant_ref.h).
using QuantizeQ8_0Fn = void (*)(const float* x, int64_t cols, int8_t* qs, float* d,
                                int32_t* neg_sums);
// Quantizes one token to Q8_K: qs (cols), d (cols / 256), bsums (cols / 16),
// dsums (cols / 32). Identical to QuantizeRowQ8_K.
using QuantizeQ8_KFn = void (*)(const float* x, int64_t cols, int8_t* qs, float* d,
                                int16_t* bsums, float* dsums);

// y[t * ldy + r] = W row r . activation t, for r in [r0, r1), t in [t0, t1).
// Every output is computed by the same sequence of operations whatever the
// ranges, so results do not depend on how work is split over threads.
using GemmFn = void (*)(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                        int64_t t0, int64_t t1, float* y, int64_t ldy);

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// What MatMul runs for each weight type, on one instruction set.
struct KernelSet {
  const char* name;
  // Tokens per micro-kernel tile: batches up to this size stream W once.
  int64_t tile_tokens;
  QuantizeQ8_0Fn quantize_q8_0;
  QuantizeQ8_KFn quantize_q8_k;
  GemmFn f32;
  GemmFn f16;
  GemmFn bf16;
  GemmFn q8_0;
  GemmFn q4_0;
  GemmFn q4_k;
  GemmFn q6_k;
};

// The float-weight products and the activation quantizers, written once in
// Highway (matmul_float.cc) and compiled per target; kScalar gets Highway's
// baseline target (HWY_SCALAR on a plain x86-64 build, NEON on arm64).
// nullptr for an ISA the build has no Highway target for. Only call for an
// ISA the CPU runs.
struct FloatKernels {
  QuantizeQ8_0Fn quantize_q8_0;
  QuantizeQ8_KFn quantize_q8_k;
  GemmFn f32;
  GemmFn f16;
  GemmFn bf16;
};
const FloatKernels* HwyFloatKernels(Isa isa);

// The quantized-weight products: portable C++ (matmul_scalar.cc, on every
// CPU) and per ISA in intrinsics, whose int8 dot products (vpmaddubsw +
// vpmaddwd on AVX2, VNNI vpdpbusd on AVX-512) Highway 1.0.3 cannot express;
// nullptr when the compiler could not build them.
struct QuantKernels {
  // Tokens per micro-kernel tile of these kernels.
  int64_t tile_tokens;
  GemmFn q8_0;
  GemmFn q4_0;
  GemmFn q4_k;
  GemmFn q6_k;
};
const QuantKernels* ScalarQuantKernels();
const QuantKernels* Avx2QuantKernels();    // AVX2 + FMA + F16C (matmul_avx2.cc)
const QuantKernels* Avx512QuantKernels();  // AVX-512 F/BW/VL/DQ + VNNI (matmul_avx512.cc)

// The AVX-512 products of the quantized types (matmul_avx512_q8.cc,
// matmul_avx512_k.cc); x86-64 builds only.
void GemmQ8_0Avx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy);
void GemmQ4_0Avx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy);
void GemmQ4_KAvx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy);
void GemmQ6_KAvx512(const WeightMatrix& w, const Activations& a, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t ldy);

// The kernel set MatMul uses: the best one the CPU supports, unless a test
// has forced another with SetIsaForTest.
const KernelSet& ActiveKernels();

// Whether the CPU (and OS) can run `isa`'s kernels.
bool IsaSupported(Isa isa);

// Forces MatMul onto `isa` (which must be supported); not thread-safe.
void SetIsaForTest(Isa isa);
// Back to the best supported set.
void ResetIsaForTest();

// Minimum estimated work per thread before MatMul uses another one (in ns);
// tests set 0 to exercise splitting on tiny matrices. Negative restores the
// default. Not thread-safe.
void SetMinNsPerThreadForTest(double ns);

}  // namespace sinkserve::engine::matmul_internal

#endif  // SINKSERVE_ENGINE_CPU_MATMUL_INTERNAL_H_
