// The synthetic SentencePiece vocab of gguf_writer.h.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf_writer.h"

namespace sinkserve::engine {
namespace {

constexpr char kSpace[] = "\xe2\x96\x81";  // U+2581 "▁", SentencePiece's space

// Frequent English words, most frequent first (so they score highest). Every
// prefix of "▁word" becomes a piece too, which lets the SentencePiece merge
// loop build each word from its characters.
constexpr const char* kWords[] = {
    "the",    "and",    "to",      "a",       "was",     "he",     "she",
    "it",     "of",     "in",      "her",     "his",     "they",   "said",
    "you",    "with",   "on",      "for",     "that",    "is",     "big",
    "day",    "one",    "there",   "were",    "had",     "so",     "very",
    "but",    "not",    "be",      "at",      "time",    "happy",  "upon",
    "once",   "little", "girl",    "boy",     "named",   "lily",   "tom",
    "play",   "saw",    "wanted",  "friend",  "friends", "mom",    "dad",
    "went",   "all",    "do",      "can",     "what",    "we",     "up",
    "out",    "go",     "are",     "have",    "this",    "from",   "them",
    "an",     "by",     "my",      "me",      "no",      "will",   "could",
    "would",  "like",   "about",   "when",    "who",     "how",    "some",
    "then",   "now",    "look",    "see",     "more",    "make",   "made",
    "good",   "new",    "first",   "man",     "dog",     "cat",    "tree",
    "house",  "sun",    "ball",    "toy",     "park",    "water",  "help",
    "love",   "fun",    "sad",     "red",     "blue",    "green",  "home",
    "came",   "felt",   "found",   "thought", "know",    "just",   "into",
    "over",   "after",  "because", "again",   "each",    "other",  "many",
    "people", "world",  "hello",   "yes",     "thank",   "please", "sorry",
    "name",   "what",   "where",   "why",     "which",   "server", "session",
    "model",  "token",  "cache",   "text",    "number"};

constexpr char kPunctuation[] = ".,!?'\"-:;()";

}  // namespace

absl::StatusOr<SyntheticVocab> MakeSyntheticVocab(int64_t vocab_size) {
  if (vocab_size < kMinSyntheticVocab || vocab_size > (int64_t{1} << 22)) {
    return absl::InvalidArgumentError(
        absl::StrCat("synthetic vocab size ", vocab_size, " is outside [",
                     kMinSyntheticVocab, ", 4194304]"));
  }
  SyntheticVocab v;
  v.tokens.reserve(vocab_size);
  v.scores.reserve(vocab_size);
  v.token_types.reserve(vocab_size);
  absl::flat_hash_set<std::string> seen;
  auto add = [&](std::string piece, float score, int32_t type) {
    if (static_cast<int64_t>(v.tokens.size()) >= vocab_size) return;
    if (!seen.insert(piece).second) return;
    v.tokens.push_back(std::move(piece));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0.f, 2);
  add("<s>", 0.f, 3);
  add("</s>", 0.f, 3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    add(name, 0.f, 6);
  }
  // Normal pieces score -1, -2, ...: earlier ones win SentencePiece merges.
  float score = 0.f;
  auto piece = [&](std::string p) { add(std::move(p), --score, 1); };
  piece(kSpace);
  for (char c = 'a'; c <= 'z'; ++c) piece(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) piece(kSpace + std::string(1, c));
  for (const char* p = kPunctuation; *p; ++p) piece(std::string(1, *p));
  for (char c = '0'; c <= '9'; ++c) piece(std::string(1, c));
  for (char c = 'A'; c <= 'Z'; ++c) piece(std::string(1, c));
  for (char c = 'A'; c <= 'Z'; ++c) piece(kSpace + std::string(1, c));
  for (const char* word : kWords) {
    const std::string w = kSpace + std::string(word);
    // Prefixes longer than the space + first letter, shortest first.
    for (size_t n = sizeof(kSpace); n <= w.size(); ++n) piece(w.substr(0, n));
  }
  // Fill the rest with letter strings of growing length, with and without a
  // leading space, until the vocab is full. 26^4 covers any size allowed.
  for (int len = 2; static_cast<int64_t>(v.tokens.size()) < vocab_size; ++len) {
    std::string s(len, 'a');
    while (static_cast<int64_t>(v.tokens.size()) < vocab_size) {
      piece(kSpace + s);
      piece(s);
      int i = len - 1;  // odometer increment over a..z
      while (i >= 0 && s[i] == 'z') s[i--] = 'a';
      if (i < 0) break;
      ++s[i];
    }
  }
  return v;
}

void AddSyntheticTokenizer(const SyntheticVocab& vocab, GgufWriter* writer) {
  writer->AddString("tokenizer.ggml.model", "llama");
  writer->AddString("tokenizer.ggml.pre", "default");
  writer->AddStringArray("tokenizer.ggml.tokens", vocab.tokens);
  writer->AddFloat32Array("tokenizer.ggml.scores", vocab.scores);
  writer->AddInt32Array("tokenizer.ggml.token_type", vocab.token_types);
  writer->AddUint32("tokenizer.ggml.bos_token_id", 1);
  writer->AddUint32("tokenizer.ggml.eos_token_id", 2);
  writer->AddUint32("tokenizer.ggml.unknown_token_id", 0);
  writer->AddBool("tokenizer.ggml.add_bos_token", true);
  writer->AddBool("tokenizer.ggml.add_eos_token", false);
}

}  // namespace sinkserve::engine
