// Scalar reference quantization, bit-exact with ggml's quantize_row_*_ref and
// dequantize_row_* (ggml-quants.c). These write model files (so a file made
// here is the file ggml would make from the same floats) and are the ground
// truth that optimised kernels are tested against. Slow on purpose: no SIMD.
//
// `k` is a number of elements and must be a multiple of the type's block size
// (32 for Q8_0/Q4_0, 256 for the k-quants). Inputs must be finite.
#ifndef SINKSERVE_ENGINE_GGUF_QUANT_REF_H_
#define SINKSERVE_ENGINE_GGUF_QUANT_REF_H_

#include <cstdint>

#include "absl/status/status.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/quant_blocks.h"

namespace sinkserve::engine {

void QuantizeRowQ8_0(const float* x, BlockQ8_0* y, int64_t k);
void DequantizeRowQ8_0(const BlockQ8_0* x, float* y, int64_t k);

void QuantizeRowQ4_0(const float* x, BlockQ4_0* y, int64_t k);
void DequantizeRowQ4_0(const BlockQ4_0* x, float* y, int64_t k);

void QuantizeRowQ4_K(const float* x, BlockQ4_K* y, int64_t k);
void DequantizeRowQ4_K(const BlockQ4_K* x, float* y, int64_t k);

void QuantizeRowQ6_K(const float* x, BlockQ6_K* y, int64_t k);
void DequantizeRowQ6_K(const BlockQ6_K* x, float* y, int64_t k);

// Activations for k-quant dot products. Unlike ggml, an all-zero block also
// gets zero bsums (ggml leaves them unset; they are multiplied by d = 0).
void QuantizeRowQ8_K(const float* x, BlockQ8_K* y, int64_t k);
void DequantizeRowQ8_K(const BlockQ8_K* x, float* y, int64_t k);

void QuantizeRowF16(const float* x, uint16_t* y, int64_t k);
void DequantizeRowF16(const uint16_t* x, float* y, int64_t k);
void QuantizeRowBF16(const float* x, uint16_t* y, int64_t k);
void DequantizeRowBF16(const uint16_t* x, float* y, int64_t k);

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K block's packed
// `scales`, as ggml's get_scale_min_k4.
void GetScaleMinK4(int j, const uint8_t* scales, uint8_t* scale, uint8_t* min);

// Whether QuantizeRow/DequantizeRow handle `type`: F32, F16, BF16, Q8_0,
// Q4_0, Q4_K, Q6_K.
bool HasQuantRef(GgmlType type);

// Type-dispatched row conversion. `n` must be a multiple of the block size;
// `out` / `in` hold GgmlRowBytes(type, n) bytes (no alignment needed).
// INVALID_ARGUMENT for a ragged `n`, UNIMPLEMENTED for other types.
absl::Status QuantizeRow(GgmlType type, const float* x, int64_t n, void* out);
absl::Status DequantizeRow(GgmlType type, const void* in, int64_t n, float* y);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_QUANT_REF_H_
