// Hyperparameters of a llama-family model, read from GGUF metadata.
#ifndef SINKSERVE_ENGINE_GGUF_MODEL_CONFIG_H_
#define SINKSERVE_ENGINE_GGUF_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"

namespace sinkserve::engine {

// How RoPE pairs the dimensions of a head.
enum class RopeStyle {
  kAdjacent,  // (x[2i], x[2i+1]): llama.cpp "normal" mode, used by `llama`
  kNeox,      // (x[i], x[i + d/2]): rotate-half, used by `qwen2`
};

struct ModelConfig {
  std::string architecture;  // "llama" or "qwen2"
  std::string name;          // general.name, may be empty
  int64_t dim = 0;           // embedding_length
  int64_t n_layers = 0;      // block_count
  int64_t n_heads = 0;       // attention.head_count
  int64_t n_kv_heads = 0;    // attention.head_count_kv (defaults to n_heads)
  int64_t head_dim = 0;      // dim / n_heads (or attention.key_length)
  int64_t ffn_dim = 0;       // feed_forward_length
  int64_t vocab_size = 0;    // rows of token_embd.weight
  int64_t context_length = 0;
  float rms_eps = 1e-5f;           // attention.layer_norm_rms_epsilon
  float rope_freq_base = 10000.f;  // rope.freq_base
  float rope_scale = 1.f;          // linear scaling factor: position /= scale
  RopeStyle rope_style = RopeStyle::kAdjacent;
  bool tied_output = false;  // no output.weight: the embedding is reused
  bool qkv_bias = false;     // qwen2: attn_{q,k,v}.bias present

  // Reads `{arch}.*` keys and checks them against the tensor table (shapes of
  // token_embd, per-layer tensors). Unknown architectures: INVALID_ARGUMENT
  // naming the architecture and the supported ones.
  static absl::StatusOr<ModelConfig> FromGguf(const GgufFile& file);
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_MODEL_CONFIG_H_
