#include "engine/gguf/model_config.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

// Bounds that keep every product of hyperparameters far from overflow while
// admitting any model that exists (largest dims today are ~2^15).
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxContext = int64_t{1} << 30;

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("model config: ", message));
}

// Debian's Abseil is built with its own string_view, which is what StrCat
// and Status accept; std::string_view must be converted explicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// A positive integer hyperparameter; `fallback` (if >= 0) when absent.
absl::StatusOr<int64_t> GetCount(const GgufFile& file, const std::string& key,
                                 int64_t max, int64_t fallback = -1) {
  if (file.Find(key) == nullptr) {
    if (fallback >= 0) return fallback;
    return Invalid(absl::StrCat("required key '", key, "' is missing"));
  }
  absl::StatusOr<uint64_t> v = file.GetUint(key);
  if (!v.ok()) return Invalid(v.status().message());
  if (*v == 0 || *v > static_cast<uint64_t>(max)) {
    return Invalid(
        absl::StrCat("'", key, "' is ", *v, ", outside [1, ", max, "]"));
  }
  return static_cast<int64_t>(*v);
}

// A positive finite float hyperparameter, `fallback` when absent.
absl::StatusOr<float> GetPositive(const GgufFile& file, const std::string& key,
                                  float fallback) {
  if (file.Find(key) == nullptr) return fallback;
  absl::StatusOr<double> v = file.GetDouble(key);
  if (!v.ok()) return Invalid(v.status().message());
  if (!(*v > 0) || !std::isfinite(*v)) {
    return Invalid(
        absl::StrCat("'", key, "' is ", *v, ", not a positive number"));
  }
  return static_cast<float>(*v);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "{";
  for (size_t i = 0; i < shape.size(); ++i)
    absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "}";
}

// Linear RoPE scaling from `{arch}.rope.scaling.*`, or the older
// `{arch}.rope.scale_linear`. 1 means none.
absl::StatusOr<float> RopeScale(const GgufFile& file, const std::string& a) {
  if (file.Find(a + ".rope.scaling.type") != nullptr) {
    SINKSERVE_ASSIGN_OR_RETURN(std::string_view type,
                               file.GetString(a + ".rope.scaling.type"));
    if (type == "none") return 1.f;
    if (type != "linear") {
      return Invalid(absl::StrCat("RoPE scaling type '", Sv(type),
                                  "' is not supported (only linear)"));
    }
    return GetPositive(file, a + ".rope.scaling.factor", 1.f);
  }
  return GetPositive(file, a + ".rope.scale_linear", 1.f);
}

// Checks the tensor table against `c`: every tensor the architecture needs
// is there with the right shape, and nothing else is (a tensor we do not know
// how to use means the file is a model we would run wrongly).
absl::Status CheckTensors(const GgufFile& file, const ModelConfig& c) {
  struct Expected {
    std::vector<int64_t> shape;
    std::string meaning;
    bool required;
  };
  // Each layer has 9 tensors at least: a block count beyond the tensor count
  // is refused before building its table (a fuzzed header claimed 10^6
  // layers, and the table took seconds).
  if (c.n_layers > static_cast<int64_t>(file.tensors().size())) {
    return Invalid(absl::StrCat("block_count ", c.n_layers, " but the file holds only ",
                                file.tensors().size(), " tensors"));
  }
  absl::flat_hash_map<std::string, Expected> expected;
  const int64_t q_dim = c.n_heads * c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  expected["token_embd.weight"] = {{c.dim, c.vocab_size}, "dim x vocab", true};
  expected["output_norm.weight"] = {{c.dim}, "dim", true};
  expected["output.weight"] = {
      {c.dim, c.vocab_size}, "dim x vocab", !c.tied_output};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    expected[p + "attn_norm.weight"] = {{c.dim}, "dim", true};
    expected[p + "attn_q.weight"] = {
        {c.dim, q_dim}, "dim x n_heads*head_dim", true};
    expected[p + "attn_k.weight"] = {
        {c.dim, kv_dim}, "dim x n_kv_heads*head_dim", true};
    expected[p + "attn_v.weight"] = {
        {c.dim, kv_dim}, "dim x n_kv_heads*head_dim", true};
    expected[p + "attn_output.weight"] = {
        {q_dim, c.dim}, "n_heads*head_dim x dim", true};
    expected[p + "ffn_norm.weight"] = {{c.dim}, "dim", true};
    expected[p + "ffn_gate.weight"] = {{c.dim, c.ffn_dim}, "dim x ffn", true};
    expected[p + "ffn_up.weight"] = {{c.dim, c.ffn_dim}, "dim x ffn", true};
    expected[p + "ffn_down.weight"] = {{c.ffn_dim, c.dim}, "ffn x dim", true};
    if (c.qkv_bias) {
      expected[p + "attn_q.bias"] = {{q_dim}, "n_heads*head_dim", true};
      expected[p + "attn_k.bias"] = {{kv_dim}, "n_kv_heads*head_dim", true};
      expected[p + "attn_v.bias"] = {{kv_dim}, "n_kv_heads*head_dim", true};
    }
  }
  for (const GgufTensorInfo& t : file.tensors()) {
    auto it = expected.find(std::string(t.name));
    if (it == expected.end()) {
      // Llama 3.1+ files carry per-frequency RoPE factors; running them
      // without would silently change every rotation.
      const char* hint =
          t.name == "rope_freqs.weight"
              ? " (Llama 3.1-style RoPE frequency factors are not supported)"
              : "";
      return Invalid(absl::StrCat("unexpected tensor '", Sv(t.name), "' for a ",
                                  c.n_layers, "-layer ", c.architecture,
                                  " model", hint));
    }
    if (t.shape != it->second.shape) {
      return Invalid(absl::StrCat("tensor '", Sv(t.name), "' has shape ",
                                  ShapeString(t.shape), ", expected ",
                                  ShapeString(it->second.shape), " (",
                                  it->second.meaning, ")"));
    }
  }
  for (const auto& [name, e] : expected) {
    if (e.required && file.FindTensor(name) == nullptr) {
      return Invalid(absl::StrCat("tensor '", name, "' is missing"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromGguf(const GgufFile& file) {
  ModelConfig c;
  absl::StatusOr<std::string_view> arch =
      file.GetString("general.architecture");
  if (!arch.ok()) return Invalid(arch.status().message());
  if (*arch != "llama" && *arch != "qwen2") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported architecture '", Sv(*arch),
                     "' (supported: llama, qwen2)"));
  }
  c.architecture = std::string(*arch);
  const std::string& a = c.architecture;
  c.rope_style = a == "qwen2" ? RopeStyle::kNeox : RopeStyle::kAdjacent;
  if (absl::StatusOr<std::string_view> name = file.GetString("general.name");
      name.ok()) {
    c.name = std::string(*name);
  }

  SINKSERVE_ASSIGN_OR_RETURN(c.dim,
                             GetCount(file, a + ".embedding_length", kMaxDim));
  SINKSERVE_ASSIGN_OR_RETURN(c.n_layers,
                             GetCount(file, a + ".block_count", kMaxDim));
  SINKSERVE_ASSIGN_OR_RETURN(
      c.n_heads, GetCount(file, a + ".attention.head_count", kMaxDim));
  SINKSERVE_ASSIGN_OR_RETURN(
      c.n_kv_heads,
      GetCount(file, a + ".attention.head_count_kv", kMaxDim, c.n_heads));
  SINKSERVE_ASSIGN_OR_RETURN(
      c.ffn_dim, GetCount(file, a + ".feed_forward_length", kMaxDim));
  SINKSERVE_ASSIGN_OR_RETURN(
      c.context_length, GetCount(file, a + ".context_length", kMaxContext));
  if (c.n_heads % c.n_kv_heads != 0) {
    return Invalid(absl::StrCat("head_count ", c.n_heads,
                                " is not a multiple of head_count_kv ",
                                c.n_kv_heads));
  }
  const int64_t default_head_dim =
      c.dim % c.n_heads == 0 ? c.dim / c.n_heads : 0;
  SINKSERVE_ASSIGN_OR_RETURN(
      c.head_dim,
      GetCount(file, a + ".attention.key_length", kMaxDim, default_head_dim));
  if (c.head_dim == 0) {
    return Invalid(absl::StrCat("embedding_length ", c.dim,
                                " is not a multiple of head_count ",
                                c.n_heads));
  }
  SINKSERVE_ASSIGN_OR_RETURN(
      int64_t value_dim,
      GetCount(file, a + ".attention.value_length", kMaxDim, c.head_dim));
  if (value_dim != c.head_dim) {
    return Invalid(absl::StrCat("value_length ", value_dim,
                                " differs from key_length ", c.head_dim,
                                " (not supported)"));
  }
  if (c.head_dim % 2 != 0) {
    return Invalid(
        absl::StrCat("head size ", c.head_dim, " is odd; RoPE needs pairs"));
  }
  SINKSERVE_ASSIGN_OR_RETURN(
      int64_t rope_dims,
      GetCount(file, a + ".rope.dimension_count", kMaxDim, c.head_dim));
  if (rope_dims != c.head_dim) {
    return Invalid(absl::StrCat("rope.dimension_count ", rope_dims,
                                " differs from the head size ", c.head_dim,
                                " (partial RoPE is not supported)"));
  }

  SINKSERVE_ASSIGN_OR_RETURN(
      c.rms_eps,
      GetPositive(file, a + ".attention.layer_norm_rms_epsilon", 1e-5f));
  SINKSERVE_ASSIGN_OR_RETURN(c.rope_freq_base,
                             GetPositive(file, a + ".rope.freq_base", 10000.f));
  SINKSERVE_ASSIGN_OR_RETURN(c.rope_scale, RopeScale(file, a));

  const GgufTensorInfo* embd = file.FindTensor("token_embd.weight");
  if (embd == nullptr) return Invalid("tensor 'token_embd.weight' is missing");
  if (embd->shape.size() != 2 || embd->shape[0] != c.dim ||
      embd->shape[1] <= 0) {
    return Invalid(absl::StrCat("tensor 'token_embd.weight' has shape ",
                                ShapeString(embd->shape), ", expected {", c.dim,
                                ", vocab}"));
  }
  c.vocab_size = embd->shape[1];
  c.tied_output = file.FindTensor("output.weight") == nullptr;
  c.qkv_bias = file.FindTensor("blk.0.attn_q.bias") != nullptr;
  SINKSERVE_RETURN_IF_ERROR(CheckTensors(file, c));
  return c;
}

}  // namespace sinkserve::engine
