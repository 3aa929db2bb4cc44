#include "engine/tokenizer/bpe_tokenizer.h"

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
#include "engine/tokenizer/pretokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

// GPT-2's bytes_to_unicode: printable bytes stand for themselves and the
// others (controls, space, DEL, NBSP, soft hyphen) for U+0100 upwards in
// byte order, so every byte is one visible character and BPE never sees a
// space or a partial UTF-8 sequence.
class ByteCodec {
 public:
  ByteCodec() {
    byte_of_.fill(-1);
    uint32_t next_extra = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? b : next_extra++;
      encoded_[b] = EncodeUtf8(cp);
      byte_of_[cp] = static_cast<int16_t>(b);
    }
  }

  const std::string& Encode(uint8_t byte) const { return encoded_[byte]; }

  // The byte `cp` stands for, or -1 when it stands for none.
  int Decode(uint32_t cp) const {
    return cp < byte_of_.size() ? byte_of_[cp] : -1;
  }

 private:
  std::array<std::string, 256> encoded_;
  std::array<int16_t, 0x100 + 68> byte_of_;  // 68 bytes are not printable
};

const ByteCodec& Codec() {
  static const ByteCodec* const codec = new ByteCodec();
  return *codec;
}

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(Vocab vocab, PreTokenizer pre)
      : Tokenizer(std::move(vocab)),
        pre_(std::move(pre)),
        specials_(vocab_),
        num_tokens_(static_cast<int32_t>(vocab_.tokens.size())) {
    // Symbols are the strings merges work on. Tokens are symbols with their
    // own ids; merge parts and results that are no token get ids after them.
    for (int32_t id = 0; id < num_tokens_; ++id) {
      // llama.cpp refuses duplicate tokens; keeping the first is harmless.
      // Empty tokens can never be a symbol.
      if (!vocab_.tokens[id].empty()) {
        symbol_ids_.try_emplace(vocab_.tokens[id], id);
      }
    }
    for (int b = 0; b < 256; ++b) {
      byte_symbols_[b] = Intern(Codec().Encode(static_cast<uint8_t>(b)));
    }
    for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
      const std::string_view merge = vocab_.merges[rank];
      // As llama.cpp: split at the first space that is not the first byte.
      const size_t space = merge.find(' ', 1);
      if (space == std::string_view::npos || space + 1 == merge.size()) {
        continue;  // no pair: could never apply
      }
      const std::string_view left = merge.substr(0, space);
      const std::string_view right = merge.substr(space + 1);
      const int32_t left_id = Intern(left);
      const int32_t right_id = Intern(right);
      const int32_t result = Intern(std::string(left).append(right));
      // A repeated pair keeps its first (best) rank, as llama.cpp's emplace.
      merges_.try_emplace(PairKey(left_id, right_id),
                          Merge{static_cast<int32_t>(rank), result});
    }
  }

  absl::StatusOr<std::vector<int32_t>> Encode(
      std::string_view text, const EncodeOptions& options) const override {
    const size_t bad = FirstInvalidUtf8(text);
    if (bad != text.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("text is not valid UTF-8 (at byte ", bad, ")"));
    }
    // Symbols index pieces with int32.
    if (text.size() > static_cast<size_t>(INT32_MAX)) {
      return absl::InvalidArgumentError("text too long to tokenize");
    }
    std::vector<int32_t> ids;
    if (options.add_bos) {
      if (vocab_.bos_id < 0) {
        return absl::FailedPreconditionError("vocab has no BOS token");
      }
      ids.push_back(vocab_.bos_id);
    }
    for (const TextFragment& fragment :
         specials_.Split(text, options.parse_special)) {
      if (fragment.token >= 0) {
        ids.push_back(fragment.token);
        continue;
      }
      for (const std::string_view piece : pre_.Split(fragment.text)) {
        EncodePiece(piece, &ids);
      }
    }
    return ids;
  }

  // As llama.cpp's token_to_piece for BPE: normal tokens are decoded from
  // GPT-2's byte characters, user-defined ones are raw text, control and
  // unknown ones raw text only when rendered, and other types (unused,
  // byte, undefined) nothing.
  std::string TokenBytes(int32_t id, bool render_special) const override {
    if (id < 0 || id >= num_tokens_) return "";
    const std::string& text = vocab_.tokens[id];
    switch (vocab_.type(id)) {
      case TokenType::kNormal:
        return DecodeSymbols(text);
      case TokenType::kUserDefined:
        return text;
      case TokenType::kControl:
      case TokenType::kUnknown:
        return render_special ? text : "";
      case TokenType::kUndefined:
      case TokenType::kUnused:
      case TokenType::kByte:
        return "";
    }
    return "";
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;  // symbol id of left + right
  };

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  int32_t Intern(std::string_view text) {
    const auto [it, inserted] = symbol_ids_.try_emplace(
        std::string(text), num_tokens_ + num_extra_symbols_);
    if (inserted) ++num_extra_symbols_;
    return it->second;
  }

  // The bytes of a normal token. A character that stands for no byte (only
  // in a malformed vocab) is kept as it is; llama.cpp writes an
  // "[UNK_BYTE_0x..]" marker instead.
  static std::string DecodeSymbols(std::string_view text) {
    std::string bytes;
    bytes.reserve(text.size());
    while (!text.empty()) {
      uint32_t cp = 0;
      const size_t n = DecodeUtf8Char(text, &cp);
      const int byte = Codec().Decode(cp);
      if (byte >= 0) {
        bytes.push_back(static_cast<char>(byte));
      } else {
        bytes.append(text.substr(0, n));
      }
      text.remove_prefix(n);
    }
    return bytes;
  }

  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;

  // Appends the token(s) for a symbol covering `bytes` of the input.
  void EmitSymbol(int32_t symbol, std::string_view bytes,
                  std::vector<int32_t>* ids) const;

  PreTokenizer pre_;
  SpecialTokenSplitter specials_;
  const int32_t num_tokens_;
  int32_t num_extra_symbols_ = 0;
  absl::flat_hash_map<std::string, int32_t> symbol_ids_;
  std::array<int32_t, 256> byte_symbols_{};
  absl::flat_hash_map<uint64_t, Merge> merges_;
};

// llm_tokenizer_bpe_session::tokenize for one piece: start from one symbol
// per byte and keep merging the adjacent pair with the best (lowest) merge
// rank, leftmost first among equals. A heap of candidate pairs makes this
// O(n log n); a candidate gone stale by an earlier merge is skipped.
void BpeTokenizer::EncodePiece(std::string_view piece,
                               std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (pre_.ignore_merges()) {
    std::string encoded;
    for (const char c : piece) {
      encoded += Codec().Encode(static_cast<uint8_t>(c));
    }
    const auto it = symbol_ids_.find(encoded);
    if (it != symbol_ids_.end() && it->second < num_tokens_) {
      ids->push_back(it->second);
      return;
    }
  }
  if (piece.size() == 1) {
    EmitSymbol(byte_symbols_[static_cast<uint8_t>(piece[0])], piece, ids);
    return;
  }

  struct Symbol {
    int32_t id;     // symbol id; length 0 once merged into its left neighbour
    int32_t prev;   // index of the previous live symbol, -1 at the start
    int32_t next;   // index of the next live symbol, -1 at the end
    int32_t start;  // bytes of the piece it covers
    int32_t length;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol indices
    int32_t right;
    int32_t left_id;  // the symbols when queued: a change makes it stale
    int32_t right_id;
    int32_t result;
  };
  struct Worse {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };

  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_symbols_[static_cast<uint8_t>(piece[i])], i - 1,
                  i + 1 < n ? i + 1 : -1, i, 1};
  }
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, Worse> queue(
      Worse(), std::move(storage));
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, right, symbols[left].id,
                symbols[right].id, it->second.result});
  };
  for (int32_t i = 1; i < n; ++i) consider(i - 1, i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    if (left.length == 0 || right.length == 0 || left.next != c.right ||
        left.id != c.left_id || right.id != c.right_id) {
      continue;
    }
    left.id = c.result;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }

  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    EmitSymbol(s.id, piece.substr(s.start, s.length), ids);
  }
}

void BpeTokenizer::EmitSymbol(int32_t symbol, std::string_view bytes,
                              std::vector<int32_t>* ids) const {
  if (symbol < num_tokens_) {
    ids->push_back(symbol);
    return;
  }
  // The vocab lacks a symbol the merges (or the input bytes) made. llama.cpp
  // then looks up each byte and drops those it cannot find; here each byte
  // becomes its byte token, else the unknown token, else nothing.
  for (const char c : bytes) {
    const int32_t byte_symbol = byte_symbols_[static_cast<uint8_t>(c)];
    if (byte_symbol < num_tokens_) {
      ids->push_back(byte_symbol);
    } else if (vocab_.unk_id >= 0) {
      ids->push_back(vocab_.unk_id);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> NewBpeTokenizer(Vocab vocab) {
  if (vocab.model != TokenizerModel::kBpe) {
    return absl::InvalidArgumentError(
        "NewBpeTokenizer needs a gpt2 (BPE) vocab");
  }
  SINKSERVE_RETURN_IF_ERROR(vocab.Validate());
  // llama.cpp takes a file without tokenizer.ggml.pre as "default".
  SINKSERVE_ASSIGN_OR_RETURN(
      PreTokenizer pre,
      PreTokenizer::ForName(vocab.pre.empty() ? "default" : vocab.pre));
  return std::unique_ptr<Tokenizer>(
      new BpeTokenizer(std::move(vocab), std::move(pre)));
}

}  // namespace sinkserve::engine
