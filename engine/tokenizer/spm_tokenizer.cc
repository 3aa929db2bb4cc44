#include "engine/tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/utf8.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581 "▁"

// Debian's Abseil has its own string_view; the hash map's heterogeneous
// lookup takes that one.
absl::string_view AsAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// A piece of the text during merging; merged-away symbols keep size 0.
// Indices are int32 to halve the footprint on long inputs.
struct Symbol {
  int32_t start;  // byte offset into the escaped text
  int32_t size;   // bytes
  int32_t prev;   // -1 at the ends
  int32_t next;
};

struct Bigram {
  float score;
  int32_t left;
  int32_t right;
  int32_t size;  // bytes of the merged piece, to spot stale entries
};

// Highest score on top; equal scores favour the leftmost pair, as in
// llama.cpp's llm_bigram_spm::comparator.
struct BigramLess {
  bool operator()(const Bigram& l, const Bigram& r) const {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  }
};

// "<0xNN>" -> NN, anything else -> -1.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') {
    return -1;
  }
  int value = 0;
  for (const char c : text.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

std::string UnescapeWhitespace(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.substr(i, kSpaceMarker.size()) == kSpaceMarker) {
      out.push_back(' ');
      i += kSpaceMarker.size();
    } else {
      out.push_back(piece[i++]);
    }
  }
  return out;
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(Vocab vocab)
      : Tokenizer(std::move(vocab)), splitter_(vocab_) {
    token_to_id_.reserve(vocab_.tokens.size());
    // Later duplicates win, as llama.cpp builds token_to_id.
    for (size_t id = 0; id < vocab_.tokens.size(); ++id) {
      token_to_id_[vocab_.tokens[id]] = static_cast<int32_t>(id);
    }
    // Byte fallback: "<0xNN>" first, then the bare byte, as
    // llama_byte_to_token does for SPM.
    for (int b = 0; b < 256; ++b) {
      auto it = token_to_id_.find(absl::StrFormat("<0x%02X>", b));
      if (it == token_to_id_.end()) {
        it = token_to_id_.find(std::string(1, static_cast<char>(b)));
      }
      byte_to_id_[b] = it == token_to_id_.end() ? -1 : it->second;
    }
    split_before_markers_ = std::none_of(
        vocab_.tokens.begin(), vocab_.tokens.end(), HasMarkerAfterNonMarker);
  }

  absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, const EncodeOptions& options) const override {
    const size_t bad = FirstInvalidUtf8(text);
    if (bad != text.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("text is not valid UTF-8 (at byte ", bad, ")"));
    }
    // Symbols index the escaped text with int32; an escaped space is 3 bytes.
    if (text.size() > static_cast<size_t>(INT32_MAX / 4)) {
      return absl::InvalidArgumentError("text too long to tokenize");
    }
    std::vector<int32_t> ids;
    if (options.add_bos) {
      if (vocab_.bos_id < 0) {
        return absl::FailedPreconditionError("vocab has no BOS token");
      }
      ids.push_back(vocab_.bos_id);
    }
    // llama.cpp (llama_tokenize_impl) adds the dummy prefix to the first
    // piece of text and to each piece that follows a special token, which is
    // what HF's slow tokenizer does by encoding each piece on its own.
    bool prev_special = true;
    std::string escaped;
    for (const TextFragment& fragment :
         splitter_.Split(text, options.parse_special)) {
      if (fragment.token >= 0) {
        ids.push_back(fragment.token);
        prev_special = true;
        continue;
      }
      escaped.clear();
      if (vocab_.add_space_prefix && prev_special) escaped += kSpaceMarker;
      for (const char c : fragment.text) {
        if (c == ' ') {
          escaped += kSpaceMarker;
        } else {
          escaped.push_back(c);
        }
      }
      SINKSERVE_RETURN_IF_ERROR(EncodeEscaped(escaped, &ids));
      prev_special = false;
    }
    return ids;
  }

  std::string TokenBytes(int32_t id, bool render_special) const override {
    if (id < 0 || static_cast<size_t>(id) >= vocab_.tokens.size()) return "";
    const std::string& text = vocab_.tokens[id];
    switch (vocab_.type(id)) {
      case TokenType::kNormal:
        return UnescapeWhitespace(text);
      case TokenType::kByte: {
        const int byte = ParseByteToken(text);
        if (byte >= 0) return std::string(1, static_cast<char>(byte));
        return UnescapeWhitespace(text);
      }
      case TokenType::kUserDefined:
        // Added tokens are matched verbatim on input, so they decode verbatim.
        return text;
      case TokenType::kControl:
      case TokenType::kUnknown:
        return render_special ? text : "";
      case TokenType::kUnused:
      case TokenType::kUndefined:
        break;
    }
    return "";
  }

 private:
  float Score(int32_t id) const {
    return vocab_.scores.empty() ? 0.0f : vocab_.scores[id];
  }

  // Text whose spaces are already escaped. Merged symbols are always vocab
  // pieces, so where no piece has a "▁" right after another character, no
  // merge can cross the start of a "▁" run: the text splits into words that
  // merge independently, giving llama.cpp's result with small heaps, and a
  // word seen before in this call is copied instead of merged again.
  absl::Status EncodeEscaped(std::string_view text,
                             std::vector<int32_t>* out) const {
    if (!split_before_markers_) return EncodeWord(text, out);
    absl::flat_hash_map<absl::string_view, std::pair<size_t, size_t>> seen;
    size_t begin = 0;
    while (begin < text.size()) {
      const size_t end = NextWordStart(text, begin);
      const std::string_view word = text.substr(begin, end - begin);
      begin = end;
      const auto [it, inserted] =
          seen.try_emplace(AsAbsl(word), out->size(), 0);
      if (!inserted) {
        const auto [first, count] = it->second;
        // Indices, not iterators: push_back may reallocate.
        for (size_t i = first; i < first + count; ++i) {
          out->push_back((*out)[i]);
        }
        continue;
      }
      SINKSERVE_RETURN_IF_ERROR(EncodeWord(word, out));
      it->second.second = out->size() - it->second.first;
    }
    return absl::OkStatus();
  }

  // True if `token` has a "▁" whose preceding character is not "▁". (E2 is
  // a lead byte, so the three bytes before a marker are "▁" exactly when the
  // character before it is.)
  static bool HasMarkerAfterNonMarker(std::string_view token) {
    for (size_t pos = token.find(kSpaceMarker, 1);
         pos != std::string_view::npos;
         pos = token.find(kSpaceMarker, pos + 1)) {
      if (pos < kSpaceMarker.size() ||
          token.substr(pos - kSpaceMarker.size(), kSpaceMarker.size()) !=
              kSpaceMarker) {
        return true;
      }
    }
    return false;
  }

  // The next position after `begin` where a "▁" follows another character.
  static size_t NextWordStart(std::string_view text, size_t begin) {
    for (size_t pos = text.find(kSpaceMarker, begin + 1);
         pos != std::string_view::npos;
         pos = text.find(kSpaceMarker, pos + 1)) {
      if (text.substr(pos - kSpaceMarker.size(), kSpaceMarker.size()) !=
          kSpaceMarker) {
        return pos;
      }
    }
    return text.size();
  }

  // llm_tokenizer_spm::tokenize.
  absl::Status EncodeWord(std::string_view text,
                          std::vector<int32_t>* out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(text.size());
    for (size_t offset = 0; offset < text.size();) {
      const int len =
          std::max(1, Utf8SequenceLength(static_cast<uint8_t>(text[offset])));
      const size_t size = std::min<size_t>(len, text.size() - offset);
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({static_cast<int32_t>(offset),
                         static_cast<int32_t>(size), index - 1,
                         offset + size == text.size() ? -1 : index + 1});
      offset += size;
    }
    if (symbols.empty()) return absl::OkStatus();

    std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue;
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const std::string_view piece = text.substr(
          symbols[left].start, symbols[left].size + symbols[right].size);
      const auto it = token_to_id_.find(AsAbsl(piece));
      if (it == token_to_id_.end()) return;
      queue.push(
          {Score(it->second), left, right, static_cast<int32_t>(piece.size())});
    };
    for (size_t i = 1; i < symbols.size(); ++i) {
      try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
    }

    while (!queue.empty()) {
      const Bigram bigram = queue.top();
      queue.pop();
      Symbol& left = symbols[bigram.left];
      Symbol& right = symbols[bigram.right];
      // Symbols only grow, so a changed size means one side merged since
      // this pair was queued.
      if (left.size == 0 || right.size == 0 ||
          left.size + right.size != bigram.size) {
        continue;
      }
      left.size += right.size;
      right.size = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = bigram.left;
      try_add(left.prev, bigram.left);
      try_add(bigram.left, left.next);
    }

    // Every merged symbol is a vocab piece (merges need one), so only single
    // characters can be missing; llama.cpp's rev_merge resegmentation never
    // applies and they go straight to byte fallback.
    for (int32_t i = 0; i != -1; i = symbols[i].next) {
      const std::string_view piece =
          text.substr(symbols[i].start, symbols[i].size);
      if (const auto it = token_to_id_.find(AsAbsl(piece));
          it != token_to_id_.end()) {
        out->push_back(it->second);
        continue;
      }
      const size_t mark = out->size();
      bool all_bytes = true;
      for (const char c : piece) {
        const int32_t id = byte_to_id_[static_cast<uint8_t>(c)];
        if (id < 0) {
          all_bytes = false;
          break;
        }
        out->push_back(id);
      }
      if (all_bytes) continue;
      // No byte fallback for this character: one <unk> for it, as
      // SentencePiece does.
      out->resize(mark);
      if (vocab_.unk_id < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot encode \"", AsAbsl(piece),
            "\": not in the vocab, and the vocab has no byte tokens or <unk>"));
      }
      out->push_back(vocab_.unk_id);
    }
    return absl::OkStatus();
  }

  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::array<int32_t, 256> byte_to_id_;
  SpecialTokenSplitter splitter_;
  bool split_before_markers_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> NewSpmTokenizer(Vocab vocab) {
  if (vocab.model != TokenizerModel::kSpm) {
    return absl::InvalidArgumentError(
        "NewSpmTokenizer needs a SentencePiece (\"llama\") vocab");
  }
  SINKSERVE_RETURN_IF_ERROR(vocab.Validate());
  if (vocab.types.empty()) {
    vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  }
  return std::unique_ptr<Tokenizer>(new SpmTokenizer(std::move(vocab)));
}

}  // namespace sinkserve::engine
