#include "engine/gguf/model_weights.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

std::string LayerTensor(int64_t layer, const char* suffix) {
  return absl::StrCat("blk.", layer, ".", suffix);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ModelWeights>> ModelWeights::Load(
    const std::string& path) {
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  return FromFile(std::move(file));
}

absl::StatusOr<std::shared_ptr<const ModelWeights>> ModelWeights::FromFile(
    std::unique_ptr<GgufFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("null GGUF file");
  std::shared_ptr<ModelWeights> weights(new ModelWeights());
  weights->file_ = std::move(file);
  SINKSERVE_RETURN_IF_ERROR(weights->Bind());
  return std::shared_ptr<const ModelWeights>(std::move(weights));
}

absl::StatusOr<WeightMatrix> ModelWeights::Matrix(const std::string& name, int64_t rows,
                                                  int64_t cols) const {
  const GgufTensorInfo* tensor = file_->FindTensor(name);
  if (tensor == nullptr) return absl::NotFoundError(absl::StrCat("missing tensor ", name));
  if (!IsSupportedWeightType(tensor->type->type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has type ", std::string(tensor->type->name),
        "; supported: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K"));
  }
  absl::StatusOr<WeightMatrix> matrix = WeightMatrix::FromTensor(*tensor);
  if (!matrix.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": ", matrix.status().message()));
  }
  if (matrix->rows != rows || matrix->cols != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " is (", matrix->rows, ", ", matrix->cols,
                     ") (out, in); the config needs (", rows, ", ", cols, ")"));
  }
  return matrix;
}

absl::StatusOr<const float*> ModelWeights::Vector(const std::string& name, int64_t n,
                                                  bool optional) {
  const GgufTensorInfo* tensor = file_->FindTensor(name);
  if (tensor == nullptr) {
    if (optional) return nullptr;
    return absl::NotFoundError(absl::StrCat("missing tensor ", name));
  }
  if (tensor->num_elements != n || tensor->shape.empty() || tensor->shape[0] != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has ", tensor->num_elements, " elements; expected ", n));
  }
  if (tensor->type->type == GgmlType::kF32) {
    return reinterpret_cast<const float*>(tensor->data);
  }
  if (!IsSupportedWeightType(tensor->type->type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " has unsupported type ", std::string(tensor->type->name)));
  }
  WeightMatrix row;  // (1, n)
  row.type = tensor->type;
  row.data = tensor->data;
  row.rows = 1;
  row.cols = n;
  row.row_bytes = GgmlRowBytes(*tensor->type, n);
  if (row.row_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, ": ", n, " elements is not a whole number of blocks"));
  }
  widened_.push_back(std::make_unique<float[]>(n));
  DequantizeRow(row, 0, widened_.back().get());
  return widened_.back().get();
}

absl::Status ModelWeights::Bind() {
  SINKSERVE_ASSIGN_OR_RETURN(config_, ModelConfig::FromGguf(*file_));
  const ModelConfig& c = config_;
  const int64_t q_dim = c.n_heads * c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
      c.head_dim <= 0 || c.ffn_dim <= 0 || c.vocab_size <= 0) {
    return absl::InvalidArgumentError("model config has a non-positive dimension");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_count ", c.n_heads, " is not a multiple of head_count_kv ", c.n_kv_heads));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RoPE needs an even head dim, got ", c.head_dim));
  }

  SINKSERVE_ASSIGN_OR_RETURN(token_embd_, Matrix("token_embd.weight", c.vocab_size, c.dim));
  SINKSERVE_ASSIGN_OR_RETURN(output_norm_, Vector("output_norm.weight", c.dim, false));
  if (file_->FindTensor("output.weight") != nullptr) {
    SINKSERVE_ASSIGN_OR_RETURN(output_, Matrix("output.weight", c.vocab_size, c.dim));
  } else {
    output_ = token_embd_;
  }

  layers_.resize(c.n_layers);
  decode_bytes_ = output_.rows * output_.row_bytes;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = layers_[i];
    SINKSERVE_ASSIGN_OR_RETURN(l.attn_norm,
                               Vector(LayerTensor(i, "attn_norm.weight"), c.dim, false));
    SINKSERVE_ASSIGN_OR_RETURN(l.wq, Matrix(LayerTensor(i, "attn_q.weight"), q_dim, c.dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.wk, Matrix(LayerTensor(i, "attn_k.weight"), kv_dim, c.dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.wv, Matrix(LayerTensor(i, "attn_v.weight"), kv_dim, c.dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.wo,
                               Matrix(LayerTensor(i, "attn_output.weight"), c.dim, q_dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.bq, Vector(LayerTensor(i, "attn_q.bias"), q_dim, true));
    SINKSERVE_ASSIGN_OR_RETURN(l.bk, Vector(LayerTensor(i, "attn_k.bias"), kv_dim, true));
    SINKSERVE_ASSIGN_OR_RETURN(l.bv, Vector(LayerTensor(i, "attn_v.bias"), kv_dim, true));
    SINKSERVE_ASSIGN_OR_RETURN(l.ffn_norm,
                               Vector(LayerTensor(i, "ffn_norm.weight"), c.dim, false));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_gate,
                               Matrix(LayerTensor(i, "ffn_gate.weight"), c.ffn_dim, c.dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_up,
                               Matrix(LayerTensor(i, "ffn_up.weight"), c.ffn_dim, c.dim));
    SINKSERVE_ASSIGN_OR_RETURN(l.w_down,
                               Matrix(LayerTensor(i, "ffn_down.weight"), c.dim, c.ffn_dim));
    for (const WeightMatrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      decode_bytes_ += w->rows * w->row_bytes;
    }
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
