// Matrix products against GGUF weights, computed in the weights' own format.
//
// Quantized weights are never dequantized as a whole: activations are
// quantized per row to Q8_0 / Q8_K (as ggml does) and integer dot products run
// on the blocks straight from the memory map. Kernels exist per instruction
// set (AVX-512 + VNNI, AVX2 + FMA + F16C, portable C++) and the best one the
// CPU supports is chosen at run time, so one binary runs on any x86-64.
//
// Results are deterministic and batch-invariant: a token's outputs are the
// same bits whatever the thread count, and whether it comes alone (decode)
// or inside a batch (prefill).
#ifndef SINKSERVE_ENGINE_CPU_MATMUL_H_
#define SINKSERVE_ENGINE_CPU_MATMUL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf/weight_matrix.h"
#include "engine/cpu/thread_pool.h"

namespace sinkserve::engine {

// y (n, w.rows) = x (n, w.cols) @ W^T. Split over output rows for n small
// (decode: memory-bound, each thread streams its own rows of W, in chunks it
// claims itself, taking over a slower thread's last chunks so that all finish
// together) and over rows x token tiles for large n (prefill: W rows reused
// across tokens from cache).
void MatMul(const WeightMatrix& w, const float* x, int64_t n, float* y, ThreadPool* pool);

// One product of a fused MatMul: y (n, w->rows) = x (n, w->cols) @ W^T.
struct MatMulOutput {
  const WeightMatrix* w = nullptr;
  float* y = nullptr;
};

// Several products of the same activations (Q/K/V, gate/up), each output
// bit-identical to its own MatMul, but in one pass: the activations are
// quantized once and, for decode-sized n, one thread team covers the rows of
// all the matrices, so a step waits at one barrier instead of one per matrix.
// Matrices of different types or widths are simply done one by one.
void MatMulFused(absl::Span<const MatMulOutput> outs, const float* x, int64_t n,
                 ThreadPool* pool);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_MATMUL_H_
