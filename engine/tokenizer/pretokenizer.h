// Pre-tokenization for byte-level BPE: splitting text into the pieces that
// merges run on independently, as GGUF's tokenizer.ggml.pre names it.
//
// Each name stands for llama.cpp's list of regexes for it (llm_tokenizer_bpe
// in llama-vocab.cpp). The first regex splits the text; each later one splits
// every piece of the one before. A regex cuts a piece into its matches and
// the unmatched stretches between them (unicode_regex_split), so no text is
// ever dropped.
//
// The regexes are hand-written matchers rather than a regex engine: the
// common ones need the lookahead \s+(?!\S), which RE2 lacks, and llama.cpp
// itself only approximates its regexes: \p{L}, \p{N}, \p{P} and \s come from
// its own Unicode table (unicode_data.h), and in regexes with literal
// character ranges a non-ASCII space never matches the range. The matchers
// reproduce exactly that.
#ifndef SINKSERVE_ENGINE_TOKENIZER_PRETOKENIZER_H_
#define SINKSERVE_ENGINE_TOKENIZER_PRETOKENIZER_H_

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkserve::engine {

class PreTokenizer {
 public:
  // One regex of a list. The names say which regex; see the .cc for each.
  enum class Rule : uint8_t {
    kGpt2,               // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|...
    kLlama3,             // (?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|...
    kQwen2,              // kLlama3 with \p{N} instead of \p{N}{1,3}
    kPunctuationRun,     // [\p{P}\$\+<=>\^~\|]+
    kFalconPunctuation,  // [\p{P}\$\+<=>\^~\|`]+
    kNumberRun,          // \p{N}+
    kEachNumber,         // \p{N}
    kDigitTriple,        // [0-9][0-9][0-9]
    kEachNewline,        // [\r\n]
    kSpaceLetterRun,     // \s?\p{L}+
    kSpacePunctRun,      // \s?\p{P}+
    kCjkRun,             // [一-龥ࠀ-一가-퟿]+
    kDeepseekLetterRun,  // \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+ (cased letters)
    kDeepseekPunctRun,   // \s?[!-/:-~！-／：-～‘-‟　-。]+
    kTrailingSpace,      // \s+$
  };

  // The pre-tokenizer GGUF files call `name` (tokenizer.ggml.pre). An
  // unknown name is INVALID_ARGUMENT naming it and the supported ones.
  static absl::StatusOr<PreTokenizer> ForName(std::string_view name);

  // Every name ForName accepts, sorted.
  static std::vector<std::string_view> SupportedNames();

  // A pre-tokenizer running `rules` in order (tests, or a list llama.cpp
  // has that no name reaches here yet).
  explicit PreTokenizer(std::vector<Rule> rules, bool ignore_merges = false)
      : rules_(std::move(rules)), ignore_merges_(ignore_merges) {}

  // Non-empty consecutive pieces of `text` that concatenate to it. Never
  // fails: invalid UTF-8 counts as U+FFFD characters (callers that must
  // reject it check first).
  std::vector<std::string_view> Split(std::string_view text) const;

  // llama.cpp's ignore_merges (Llama 3 family): a piece that is a token as a
  // whole becomes that token without running the merges.
  bool ignore_merges() const { return ignore_merges_; }

  const std::vector<Rule>& rules() const { return rules_; }

 private:
  std::vector<Rule> rules_;
  bool ignore_merges_ = false;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_PRETOKENIZER_H_
