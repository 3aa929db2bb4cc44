#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/spm_tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {

namespace {

// isspace in the C locale, as llama.cpp strips with.
bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

}  // namespace

SpecialTokenSplitter::SpecialTokenSplitter(const Vocab& vocab) {
  for (size_t id = 0; id < vocab.tokens.size(); ++id) {
    const TokenType type = vocab.type(static_cast<int32_t>(id));
    if (vocab.tokens[id].empty()) continue;  // would match everywhere
    if (type == TokenType::kControl || type == TokenType::kUnknown ||
        type == TokenType::kUserDefined) {
      const auto has = [id](const std::vector<int32_t>& ids) {
        return std::binary_search(ids.begin(), ids.end(), static_cast<int32_t>(id));
      };
      specials_.push_back({vocab.tokens[id], static_cast<int32_t>(id),
                           type == TokenType::kUserDefined, has(vocab.lstrip_ids),
                           has(vocab.rstrip_ids)});
    }
  }
  // llama.cpp sorts by length only (unstably); ids break ties here so the
  // result does not depend on the standard library.
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const Special& a, const Special& b) {
                     return a.text.size() > b.text.size();
                   });
}

std::vector<TextFragment> SpecialTokenSplitter::Split(
    std::string_view text, bool parse_special) const {
  std::vector<TextFragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({text, -1});
  std::vector<TextFragment> next;
  for (const Special& special : specials_) {
    if (!special.always && !parse_special) continue;
    next.clear();
    bool matched = false;
    for (const TextFragment& fragment : fragments) {
      if (fragment.token >= 0) {
        next.push_back(fragment);
        continue;
      }
      std::string_view rest = fragment.text;
      for (size_t pos;
           (pos = rest.find(special.text)) != std::string_view::npos;) {
        matched = true;
        std::string_view left = rest.substr(0, pos);
        if (special.lstrip) {
          while (!left.empty() && IsAsciiSpace(left.back())) left.remove_suffix(1);
        }
        if (!left.empty()) next.push_back({left, -1});
        next.push_back({rest.substr(pos, special.text.size()), special.id});
        rest.remove_prefix(pos + special.text.size());
        if (special.rstrip) {
          while (!rest.empty() && IsAsciiSpace(rest.front())) rest.remove_prefix(1);
        }
      }
      if (!rest.empty()) next.push_back({rest, -1});
    }
    if (matched) fragments.swap(next);
  }
  return fragments;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(
    const GgufFile& file) {
  SINKSERVE_ASSIGN_OR_RETURN(Vocab vocab, Vocab::FromGguf(file));
  return FromVocab(std::move(vocab));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocab(Vocab vocab) {
  SINKSERVE_RETURN_IF_ERROR(vocab.Validate());
  // Vocabs built in code may leave types out; the implementations index them.
  if (vocab.types.empty()) {
    vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  }
  switch (vocab.model) {
    case TokenizerModel::kSpm:
      return NewSpmTokenizer(std::move(vocab));
    case TokenizerModel::kBpe:
      return NewBpeTokenizer(std::move(vocab));
  }
  return absl::InvalidArgumentError("unknown tokenizer model");
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids) const {
  // Same path as streaming, so the two can never disagree.
  StreamingDetokenizer detokenizer(*this, /*at_sequence_start=*/true);
  std::string text;
  for (const int32_t id : ids) text += detokenizer.Push(id);
  text += detokenizer.Finish();
  return text;
}

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer,
                                           bool at_sequence_start)
    : tokenizer_(tokenizer),
      strip_leading_space_(at_sequence_start &&
                           tokenizer.vocab().model == TokenizerModel::kSpm &&
                           tokenizer.vocab().add_space_prefix) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  std::string bytes = tokenizer_.TokenBytes(id, /*render_special=*/false);
  if (bytes.empty()) return "";
  // The space SentencePiece put in front of the text is on the first piece
  // that has any bytes (BOS and other control tokens have none).
  if (strip_leading_space_) {
    strip_leading_space_ = false;
    if (bytes[0] == ' ') bytes.erase(0, 1);
  }
  pending_ += bytes;
  const size_t hold = IncompleteUtf8Suffix(pending_);
  if (hold == pending_.size()) return "";
  std::string out = SanitizeUtf8(
      std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamingDetokenizer::Finish() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace sinkserve::engine
