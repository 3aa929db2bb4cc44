// The tokenizer's vocabulary as a GGUF file describes it (tokenizer.ggml.*).
#ifndef SINKSERVE_ENGINE_TOKENIZER_VOCAB_H_
#define SINKSERVE_ENGINE_TOKENIZER_VOCAB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gguf/gguf.h"

namespace sinkserve::engine {

enum class TokenizerModel {
  kSpm,  // tokenizer.ggml.model = "llama": SentencePiece with scores
  kBpe,  // tokenizer.ggml.model = "gpt2": byte-level BPE with merges
};

// tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  TokenizerModel model = TokenizerModel::kSpm;
  std::string pre = "default";  // tokenizer.ggml.pre
  std::vector<std::string> tokens;
  std::vector<float> scores;         // empty when the file has none
  std::vector<TokenType> types;      // kNormal when the file has none
  std::vector<std::string> merges;   // "left right", BPE only, rank order
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = true;
  std::string chat_template;  // tokenizer.chat_template, may be empty
  // Special tokens that swallow the whitespace on their left / right when
  // matched in text (llama.cpp's LLAMA_TOKEN_ATTR_LSTRIP / RSTRIP). GGUF has
  // no field for them: llama.cpp sets them from general.name, and so does
  // FromGguf (every special token of a "phi-3"/"phi3" model strips on its
  // right, but <unk>, <s> and <|endoftext|>). Ascending ids. Default: none.
  std::vector<int32_t> lstrip_ids;
  std::vector<int32_t> rstrip_ids;

  // Validates counts (scores/types match tokens), special ids in range.
  static absl::StatusOr<Vocab> FromGguf(const GgufFile& file);

  // The checks FromGguf makes, for vocabularies built in code: non-empty,
  // scores/types empty or one per token, special ids -1 or in range.
  absl::Status Validate() const;

  // types[id], or kNormal when the vocab has no types (callers check range).
  TokenType type(int32_t id) const {
    return types.empty() ? TokenType::kNormal : types[id];
  }
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_VOCAB_H_
