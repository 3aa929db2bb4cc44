// The tensors of a llama-family model, bound by name to typed views of the
// GGUF memory map.
//
// Nothing is copied: every WeightMatrix points into the mapping, which this
// object owns, so the page cache *is* the weights and loading costs the time
// to parse the header. Only norm and bias vectors stored in a non-F32 type
// (rare) are widened into small owned float arrays.
#ifndef SINKSERVE_ENGINE_GGUF_MODEL_WEIGHTS_H_
#define SINKSERVE_ENGINE_GGUF_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/model_config.h"
#include "engine/gguf/weight_matrix.h"

namespace sinkserve::engine {

struct LayerWeights {
  const float* attn_norm = nullptr;  // (dim)
  WeightMatrix wq;                   // (n_heads * head_dim, dim)
  WeightMatrix wk;                   // (n_kv_heads * head_dim, dim)
  WeightMatrix wv;                   // (n_kv_heads * head_dim, dim)
  WeightMatrix wo;                   // (dim, n_heads * head_dim)
  const float* bq = nullptr;         // (n_heads * head_dim) or null
  const float* bk = nullptr;         // (n_kv_heads * head_dim) or null
  const float* bv = nullptr;         // (n_kv_heads * head_dim) or null
  const float* ffn_norm = nullptr;   // (dim)
  WeightMatrix w_gate;               // (ffn_dim, dim)
  WeightMatrix w_up;                 // (ffn_dim, dim)
  WeightMatrix w_down;               // (dim, ffn_dim)
};

class ModelWeights {
 public:
  // Maps `path` and binds its tensors.
  static absl::StatusOr<std::shared_ptr<const ModelWeights>> Load(const std::string& path);
  // Binds the tensors of an already opened file, taking ownership of it.
  static absl::StatusOr<std::shared_ptr<const ModelWeights>> FromFile(
      std::unique_ptr<GgufFile> file);

  const ModelConfig& config() const { return config_; }
  const GgufFile& file() const { return *file_; }

  const WeightMatrix& token_embd() const { return token_embd_; }  // (vocab, dim)
  const float* output_norm() const { return output_norm_; }        // (dim)
  // (vocab, dim): output.weight, or token_embd when tied.
  const WeightMatrix& output() const { return output_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }

  // Bytes of weights one decode step streams from memory: every layer matrix
  // plus the output matrix (one embedding row is negligible).
  int64_t DecodeBytesPerToken() const { return decode_bytes_; }

 private:
  ModelWeights() = default;
  absl::Status Bind();
  absl::StatusOr<WeightMatrix> Matrix(const std::string& name, int64_t rows,
                                      int64_t cols) const;
  // Null (and OK) when `optional` and absent.
  absl::StatusOr<const float*> Vector(const std::string& name, int64_t n, bool optional);

  std::unique_ptr<GgufFile> file_;
  ModelConfig config_;
  WeightMatrix token_embd_;
  const float* output_norm_ = nullptr;
  WeightMatrix output_;
  std::vector<LayerWeights> layers_;
  int64_t decode_bytes_ = 0;
  // Widened copies of norm/bias vectors not stored as F32.
  std::vector<std::unique_ptr<float[]>> widened_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_MODEL_WEIGHTS_H_
