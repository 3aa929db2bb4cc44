#include "engine/gguf/weight_matrix.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf/quant_ref.h"

namespace sinkserve::engine {

bool IsSupportedWeightType(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<WeightMatrix> WeightMatrix::FromTensor(const GgufTensorInfo& tensor) {
  // Debian's Abseil has its own string_view, which StrCat takes.
  const absl::string_view name(tensor.name.data(), tensor.name.size());
  const absl::string_view type_name =
      tensor.type == nullptr ? absl::string_view("?")
                             : absl::string_view(tensor.type->name.data(), tensor.type->name.size());
  if (tensor.type == nullptr || !IsSupportedWeightType(tensor.type->type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': type ", type_name,
                     " is not supported for matrix products (need f32, f16, bf16, q8_0, q4_0, "
                     "q4_K or q6_K)"));
  }
  if (tensor.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ",
                                                   tensor.shape.size(),
                                                   " dimensions; a weight matrix needs 2"));
  }
  WeightMatrix w;
  w.type = tensor.type;
  w.data = tensor.data;
  w.cols = tensor.shape[0];
  w.rows = tensor.shape[1];
  w.row_bytes = GgmlRowBytes(*tensor.type, w.cols);
  if (w.row_bytes < 0 || w.rows < 0 || (w.data == nullptr && w.rows * w.cols > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': ", w.cols, " columns do not fit type ", type_name));
  }
  return w;
}

void DequantizeRow(const WeightMatrix& w, int64_t row, float* out) {
  const uint8_t* src = w.data + row * w.row_bytes;
  if (w.type->type == GgmlType::kF32) {
    std::memcpy(out, src, w.cols * sizeof(float));
    return;
  }
  // Types are checked by FromTensor, so this cannot fail.
  (void)engine::DequantizeRow(w.type->type, src, w.cols, out);
}

}  // namespace sinkserve::engine
