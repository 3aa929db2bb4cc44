// A typed, zero-copy view of one 2-D weight tensor of a GGUF file: what
// every backend computes with (the CPU matmuls, the CUDA uploads) and what
// ModelWeights binds by name. The types listed are those the backends
// compute in; the view itself does no math beyond reading a row.
#ifndef SINKSERVE_ENGINE_GGUF_WEIGHT_MATRIX_H_
#define SINKSERVE_ENGINE_GGUF_WEIGHT_MATRIX_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/gguf.h"

namespace sinkserve::engine {

// A 2-D weight W of shape (rows = out, cols = in), row-major, each row
// `cols` elements of `type` (ggml shape {cols, rows}).
struct WeightMatrix {
  const GgmlTypeTraits* type = nullptr;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;

  // From a GGUF tensor of 2 dims; INVALID_ARGUMENT for an unsupported type.
  static absl::StatusOr<WeightMatrix> FromTensor(const GgufTensorInfo& tensor);
};

// Types the backends compute in: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K.
bool IsSupportedWeightType(GgmlType type);

// Row `row` of W as floats (embedding lookup). out: (w.cols).
void DequantizeRow(const WeightMatrix& w, int64_t row, float* out);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_WEIGHT_MATRIX_H_
