// Writing GGUF v3 files: a general writer, and on top of it a generator of
// random llama-family models for tests and benchmarks.
#ifndef SINKSERVE_ENGINE_GGUF_GGUF_WRITER_H_
#define SINKSERVE_ENGINE_GGUF_GGUF_WRITER_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/gguf.h"

namespace sinkserve::engine {

// Collects metadata and tensor declarations, then writes the file in one pass.
// Tensor bytes may be supplied up front or produced while writing (so a model
// larger than memory can be generated). Builder style: an invalid Add* (a
// duplicate key or name, a value that does not match its declared type, a bad
// shape) is remembered, later calls are ignored, and status() / Write()
// return the first error.
class GgufWriter {
 public:
  // Receives tensor bytes in order; may be called any number of times.
  using ByteSink = std::function<absl::Status(const void* data, size_t size)>;
  // Produces exactly the tensor's size_bytes through `sink`.
  using TensorFiller = std::function<absl::Status(const ByteSink& sink)>;
  // Called after each tensor is written: (tensors done, tensors in all,
  // bytes of the file written so far).
  using Progress = std::function<void(size_t, size_t, uint64_t)>;

  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata, written in the order added. `general.alignment` (a uint32,
  // nonzero power of two) also sets the alignment of tensor data. Default: 32.
  void AddUint8(std::string_view key, uint8_t v);
  void AddInt8(std::string_view key, int8_t v);
  void AddUint16(std::string_view key, uint16_t v);
  void AddInt16(std::string_view key, int16_t v);
  void AddUint32(std::string_view key, uint32_t v);
  void AddInt32(std::string_view key, int32_t v);
  void AddUint64(std::string_view key, uint64_t v);
  void AddInt64(std::string_view key, int64_t v);
  void AddFloat32(std::string_view key, float v);
  void AddFloat64(std::string_view key, double v);
  void AddBool(std::string_view key, bool v);
  void AddString(std::string_view key, std::string_view v);
  void AddStringArray(std::string_view key, absl::Span<const std::string> v);
  void AddFloat32Array(std::string_view key, absl::Span<const float> v);
  void AddInt32Array(std::string_view key, absl::Span<const int32_t> v);
  // Any value, nested arrays included; e.g. one read from another file. The
  // variant must hold what `type` says (ints of either signedness in range,
  // double for floats). Floats and narrow ints are written at their declared
  // width.
  void AddValue(std::string_view key, const GgufValue& value);

  // A tensor of `type` with `shape` in ggml order (shape[0] contiguous).
  void AddTensor(std::string_view name, GgmlType type,
                 std::vector<int64_t> shape, std::vector<uint8_t> data);
  void AddTensor(std::string_view name, GgmlType type,
                 std::vector<int64_t> shape, TensorFiller fill);

  void set_progress(Progress progress) { progress_ = std::move(progress); }

  absl::Status status() const { return status_; }
  uint64_t alignment() const { return alignment_; }

  // Writes `path` via `path`.tmp and a rename, so no reader ever sees a half
  // written file. Fillers run here, in the order tensors were added.
  absl::Status Write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    const GgmlTypeTraits* type = nullptr;
    std::vector<int64_t> shape;
    uint64_t size_bytes = 0;
    std::vector<uint8_t> data;
    TensorFiller fill;
  };

  bool StartKey(std::string_view key, GgufValueType type);
  void AddRaw(std::string_view key, GgufValueType type, const void* v,
              size_t n);
  absl::Status AppendValue(const GgufValue& value, GgufValueType type,
                           int depth);
  absl::Status CheckTensor(std::string_view name, GgmlType type,
                           const std::vector<int64_t>& shape, uint64_t* size);
  absl::Status WriteTo(std::FILE* f) const;

  absl::Status status_;
  std::string metadata_;  // serialised key/value pairs
  uint64_t n_kv_ = 0;
  uint64_t alignment_ = 32;
  absl::flat_hash_set<std::string> keys_;
  absl::flat_hash_set<std::string> tensor_names_;
  std::vector<Tensor> tensors_;
  Progress progress_;
};

// A random llama-family model: the right tensors, shapes and metadata, with
// weights drawn from a seeded normal distribution.
struct SyntheticLlamaSpec {
  std::string arch = "llama";  // "llama" or "qwen2"
  std::string name = "synthetic";
  int64_t dim = 64;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 2;
  int64_t ffn_dim = 128;
  // Default: 512. 0 with `tokenizer_from` set: that file's token count.
  int64_t vocab_size = 512;
  int64_t context_length = 2048;
  float rope_freq_base = 10000.f;
  // Linear RoPE scaling factor (positions are divided by it). Default: 1,
  // which writes no scaling keys.
  float rope_scale = 1.f;
  float rms_eps = 1e-5f;
  bool tied_output = false;  // no output.weight
  // attn_{q,k,v}.bias. Default: true for qwen2, false for llama.
  std::optional<bool> qkv_bias;
  // Type of every matrix, token_embd included; norms and biases stay F32.
  // F32, F16, BF16, Q8_0, Q4_0, Q4_K or Q6_K.
  GgmlType weight_type = GgmlType::kF32;
  uint64_t seed = 1;
  // Matrices are N(0, (weight_scale / sqrt(fan_in))^2), fan_in = shape[0],
  // which keeps activations and logits around unit scale.
  float weight_scale = 1.f;
  // A GGUF whose tokenizer.* metadata is copied. Default: empty, which writes
  // a synthetic SentencePiece vocab of vocab_size tokens.
  std::string tokenizer_from;
  // Threads generating weights. Default: 0, one per core (at most 16). The
  // output does not depend on it.
  int threads = 0;
  GgufWriter::Progress progress;
};

absl::Status WriteSyntheticLlama(const SyntheticLlamaSpec& spec,
                                 const std::string& path);

// A SentencePiece ("llama") vocab: <unk>, <s>, </s>, the 256 byte tokens
// <0x00>..<0xFF>, then pieces ("▁", letters, digits, punctuation, prefixes of
// common English words, then letter strings) with falling scores.
struct SyntheticVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t>
      token_types;  // llama.cpp: 1 normal, 2 unknown, 3 control, 6 byte
};
inline constexpr int64_t kMinSyntheticVocab = 300;
absl::StatusOr<SyntheticVocab> MakeSyntheticVocab(int64_t vocab_size);

// Adds tokenizer.ggml.* for `vocab` (BOS 1, EOS 2, UNK 0, add_bos_token).
void AddSyntheticTokenizer(const SyntheticVocab& vocab, GgufWriter* writer);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_GGUF_WRITER_H_
