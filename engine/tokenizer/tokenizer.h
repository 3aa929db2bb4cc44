// Text <-> token ids, exactly as llama.cpp's reference tokenizers do it.
#ifndef SINKSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
#define SINKSERVE_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/vocab.h"

namespace sinkserve::engine {

struct EncodeOptions {
  bool add_bos = false;       // prepend BOS (callers pass vocab().add_bos)
  bool parse_special = false; // match control/user-defined token texts in input
};

// One piece of input after special-token splitting: raw text for the
// model's algorithm, or a special token whose text appeared verbatim.
struct TextFragment {
  std::string_view text;  // a view into the input
  int32_t token = -1;     // >= 0 when the fragment is a special token
};

// Splits input on special-token texts exactly as llama.cpp's
// tokenizer_st_partition does: tokens are tried longest text first (ties by
// id), each splitting every raw fragment left to right. User-defined tokens
// are always matched (as HF tokenizers do for added tokens); control and
// unknown tokens only with `parse_special`. Shared by the SPM and BPE
// tokenizers.
class SpecialTokenSplitter {
 public:
  explicit SpecialTokenSplitter(const Vocab& vocab);

  // Raw fragments are never empty.
  std::vector<TextFragment> Split(std::string_view text,
                                  bool parse_special) const;

 private:
  struct Special {
    std::string text;
    int32_t id;
    bool always;  // user-defined: matched even without parse_special
    bool lstrip;  // swallows the whitespace before it (Vocab::lstrip_ids)
    bool rstrip;  // and after it (Vocab::rstrip_ids)
  };
  std::vector<Special> specials_;  // longest text first
};

class Tokenizer {
 public:
  // Picks the implementation from tokenizer.ggml.model; an unknown model or
  // pre-tokenizer is INVALID_ARGUMENT naming it.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocab(Vocab vocab);

  virtual ~Tokenizer() = default;

  // Invalid UTF-8 in `text` is INVALID_ARGUMENT.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, const EncodeOptions& options) const = 0;

  // The bytes token `id` stands for in decoded text: "▁" -> " ", "<0xNN>" ->
  // the byte, byte-level BPE symbols -> their bytes. Control tokens give ""
  // unless `render_special`. Out-of-range ids give "".
  virtual std::string TokenBytes(int32_t id, bool render_special) const = 0;

  // Concatenated TokenBytes, with SentencePiece's leading space (added by
  // add_space_prefix) removed when the text starts at a sequence start.
  std::string Decode(absl::Span<const int32_t> ids) const;

  const Vocab& vocab() const { return vocab_; }

 protected:
  explicit Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {}
  Vocab vocab_;
};

// Turns a stream of ids into text, emitting only complete UTF-8 characters:
// bytes of a character split across tokens are held back until it is whole.
class StreamingDetokenizer {
 public:
  // `at_sequence_start`: strip SentencePiece's leading space from the first
  // piece (true when decoding from BOS).
  StreamingDetokenizer(const Tokenizer& tokenizer, bool at_sequence_start);

  // Text that became complete with this token (may be empty).
  std::string Push(int32_t id);
  // Whatever is still held back; an incomplete sequence becomes U+FFFD.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool strip_leading_space_;
  std::string pending_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_TOKENIZER_H_
