// SIMD helpers for the CPU forward pass (attention, norms, activations).
//
// One binary, best instruction set at run time (Highway dynamic dispatch:
// AVX-512, AVX2, SSE4, scalar). All functions work on any length (tails are
// handled), take unaligned pointers and are single-threaded: callers split
// large work over a ThreadPool themselves. Results differ from a scalar loop
// only by float rounding (sums are taken in a different order).
#ifndef SINKSERVE_ENGINE_CPU_VEC_OPS_H_
#define SINKSERVE_ENGINE_CPU_VEC_OPS_H_

#include <cstdint>

namespace sinkserve::engine {

// sum_i a[i] * b[i]. a, b: (n).
float Dot(const float* a, const float* b, int64_t n);

// y += alpha * x. x, y: (n).
void Axpy(float alpha, const float* x, float* y, int64_t n);

// x *= s. x: (n).
void Scale(float* x, float s, int64_t n);

// out = a + b. a, b, out: (n); out may alias a or b.
void Add(const float* a, const float* b, float* out, int64_t n);

// sum_i x[i]^2, accumulated in double (rows of large models stay exact to
// float precision). x: (n).
double SumSquares(const float* x, int64_t n);

// out = x / sqrt(mean(x^2) + eps) * w, the Llama RMSNorm. x, w, out: (n);
// out may alias x. w == nullptr means no weight (all ones).
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* out);

// max_i x[i]; -inf for n == 0. x: (n).
float MaxValue(const float* x, int64_t n);

// In place: x = exp(x - max) / sum exp(x - max). x: (n), n >= 1.
void Softmax(float* x, int64_t n);

// log(sum_i exp(x[i])), computed stably (max-subtracted); -inf for n == 0.
// With it, -log p(token) = LogSumExp(logits) - logits[token]. x: (n).
float LogSumExp(const float* x, int64_t n);

// gate = silu(gate) * up = gate / (1 + exp(-gate)) * up, the SwiGLU
// activation. gate, up: (n); gate may alias up.
void SiluMul(float* gate, const float* up, int64_t n);

// out = in widened to float, exactly (as HalfToFloat / Bf16ToFloat in
// fp16.h; F16 NaNs stay NaN but may come out quieted). in: (n) F16 or BF16 bits; out: (n).
void HalfToFloatRow(const uint16_t* in, float* out, int64_t n);
void Bf16ToFloatRow(const uint16_t* in, float* out, int64_t n);

// Name of the instruction set the calls above dispatch to ("AVX3", "AVX2",
// ...), for logs and benchmarks.
const char* VecOpsTarget();

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_VEC_OPS_H_
