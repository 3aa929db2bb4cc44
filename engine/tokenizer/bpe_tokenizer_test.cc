#include "engine/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/utf8.h"
#include "engine/tokenizer/vocab.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// GPT-2's bytes_to_unicode, written out again from encoder.py so the test
// does not lean on the code under test.
std::string ByteChar(int byte) {
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
           (b >= 0xAE && b <= 0xFF);
  };
  if (printable(byte)) return EncodeUtf8(byte);
  int n = 0;
  for (int b = 0; b < byte; ++b) n += !printable(b);
  return EncodeUtf8(256 + n);
}

// Tokens 0..255 are the 256 byte characters (token b is byte b), then
// `extra` in order (ids 256, 257, ...).
Vocab ByteVocab(const std::vector<std::string>& extra,
                const std::vector<std::string>& merges,
                std::string pre = "gpt-2") {
  Vocab vocab;
  vocab.model = TokenizerModel::kBpe;
  vocab.pre = std::move(pre);
  for (int b = 0; b < 256; ++b) vocab.tokens.push_back(ByteChar(b));
  for (const std::string& t : extra) vocab.tokens.push_back(t);
  vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  vocab.merges = merges;
  return vocab;
}

std::unique_ptr<Tokenizer> Make(Vocab vocab) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      NewBpeTokenizer(std::move(vocab));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

std::vector<int32_t> Encode(const Tokenizer& tokenizer, std::string_view text,
                            EncodeOptions options = {}) {
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, options);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

EncodeOptions ParseSpecial() {
  EncodeOptions options;
  options.parse_special = true;
  return options;
}

EncodeOptions AddBos() {
  EncodeOptions options;
  options.add_bos = true;
  return options;
}

TEST(ByteCharTest, KnownValues) {
  EXPECT_EQ(ByteChar('a'), "a");
  EXPECT_EQ(ByteChar(' '), "\u0120");   // Ġ
  EXPECT_EQ(ByteChar('\n'), "\u010A");  // Ċ
  EXPECT_EQ(ByteChar(0x00), "\u0100");
  EXPECT_EQ(ByteChar(0x7F), "\u0121");
  EXPECT_EQ(ByteChar(0xAD), "\u0143");
  EXPECT_EQ(ByteChar(0xE9), "\u00E9");
}

TEST(BpeTokenizerTest, WithoutMergesEveryByteIsAToken) {
  const auto tokenizer = Make(ByteVocab({}, {}));
  EXPECT_THAT(Encode(*tokenizer, "a b\n"), ElementsAre('a', ' ', 'b', '\n'));
  // "é" is the two bytes C3 A9.
  EXPECT_THAT(Encode(*tokenizer, "\u00E9"), ElementsAre(0xC3, 0xA9));
  EXPECT_THAT(Encode(*tokenizer, ""), IsEmpty());
}

TEST(BpeTokenizerTest, EveryByteDecodesToItself) {
  const auto tokenizer = Make(ByteVocab({}, {}));
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tokenizer->TokenBytes(b, false), std::string(1, char(b))) << b;
  }
}

TEST(BpeTokenizerTest, MergesBuildWords) {
  // ids: 256 he, 257 ll, 258 hell, 259 hello, 260 Ġw, 261 or, 262 Ġwor,
  // 263 Ġworld (via "Ġwor ld"), 264 ld
  const auto tokenizer =
      Make(ByteVocab({"he", "ll", "hell", "hello", "\u0120w", "or", "\u0120wor",
                      "\u0120world", "ld"},
                     {"h e", "l l", "he ll", "hell o", "\u0120 w", "o r",
                      "\u0120w or", "l d", "\u0120wor ld"}));
  EXPECT_THAT(Encode(*tokenizer, "hello world"), ElementsAre(259, 263));
  // Pieces are encoded apart: no merge crosses "hello" | " world".
  EXPECT_THAT(Encode(*tokenizer, "hellohello"), ElementsAre(259, 259));
  EXPECT_THAT(Encode(*tokenizer, "help"), ElementsAre(256, 'l', 'p'));
}

TEST(BpeTokenizerTest, LowerRankMergesFirstWhereverItIs) {
  // "b c" outranks "a b": abc -> a bc, although ab comes first in the text.
  const auto tokenizer =
      Make(ByteVocab({"bc", "ab", "abc"}, {"b c", "a b", "ab c"}));
  EXPECT_THAT(Encode(*tokenizer, "abc"), ElementsAre('a', 256));
}

TEST(BpeTokenizerTest, EqualRanksMergeLeftmostFirst) {
  const auto tokenizer = Make(ByteVocab({"aa"}, {"a a"}));
  EXPECT_THAT(Encode(*tokenizer, "aaa"), ElementsAre(256, 'a'));
  EXPECT_THAT(Encode(*tokenizer, "aaaaa"), ElementsAre(256, 256, 'a'));
}

TEST(BpeTokenizerTest, StaleCandidatesAreSkipped) {
  // abcd: bc merges first; the queued a+b and c+d no longer exist, so only
  // a+bc (rank 3) applies.
  const auto tokenizer =
      Make(ByteVocab({"bc", "ab", "cd", "abc"}, {"b c", "a b", "c d", "a bc"}));
  EXPECT_THAT(Encode(*tokenizer, "abcd"), ElementsAre(259, 'd'));
}

TEST(BpeTokenizerTest, RepeatedMergeKeepsItsFirstRank) {
  const auto tokenizer =
      Make(ByteVocab({"bc", "ab"}, {"b c", "a b", "b c", "a b"}));
  EXPECT_THAT(Encode(*tokenizer, "abc"), ElementsAre('a', 256));
}

TEST(BpeTokenizerTest, MergeResultMissingFromVocabFallsBackToBytes) {
  const auto tokenizer = Make(ByteVocab({}, {"a b"}));
  EXPECT_THAT(Encode(*tokenizer, "abc"), ElementsAre('a', 'b', 'c'));
}

TEST(BpeTokenizerTest, MissingByteTokenBecomesUnknown) {
  Vocab vocab = ByteVocab({"<unk>"}, {});
  vocab.tokens['z'] = "not z";
  vocab.types[256] = TokenType::kUnknown;
  vocab.unk_id = 256;
  const auto tokenizer = Make(std::move(vocab));
  EXPECT_THAT(Encode(*tokenizer, "azb"), ElementsAre('a', 256, 'b'));
}

TEST(BpeTokenizerTest, Llama3TakesWholeTokensWithoutMerging) {
  // "abc" is a token no merge reaches: only ignore_merges finds it.
  const std::vector<std::string> extra = {"bc", "abc"};
  const std::vector<std::string> merges = {"b c"};
  EXPECT_THAT(Encode(*Make(ByteVocab(extra, merges, "gpt-2")), "abc"),
              ElementsAre('a', 256));
  EXPECT_THAT(Encode(*Make(ByteVocab(extra, merges, "llama-bpe")), "abc"),
              ElementsAre(257));
  // A piece that is no token still merges.
  EXPECT_THAT(Encode(*Make(ByteVocab(extra, merges, "llama-bpe")), "bcd"),
              ElementsAre(256, 'd'));
}

TEST(BpeTokenizerTest, SpecialTokens) {
  Vocab vocab = ByteVocab({"<|endoftext|>", "<tag>"}, {});
  vocab.types[256] = TokenType::kControl;
  vocab.types[257] = TokenType::kUserDefined;
  vocab.bos_id = 256;
  const auto tokenizer = Make(std::move(vocab));
  // A control token's text is only a token when asked for.
  EXPECT_EQ(Encode(*tokenizer, "x<|endoftext|>").size(), 14u);
  EXPECT_THAT(Encode(*tokenizer, "x<|endoftext|>", ParseSpecial()),
              ElementsAre('x', 256));
  // User-defined tokens always are (as llama.cpp and HF's added tokens).
  EXPECT_THAT(Encode(*tokenizer, "a<tag>b"), ElementsAre('a', 257, 'b'));
  EXPECT_THAT(Encode(*tokenizer, "a", AddBos()), ElementsAre(256, 'a'));
  EXPECT_EQ(tokenizer->TokenBytes(256, false), "");
  EXPECT_EQ(tokenizer->TokenBytes(256, true), "<|endoftext|>");
  EXPECT_EQ(tokenizer->TokenBytes(257, false), "<tag>");
  EXPECT_EQ(tokenizer->TokenBytes(-1, true), "");
  EXPECT_EQ(tokenizer->TokenBytes(258, true), "");
}

TEST(BpeTokenizerTest, UserDefinedTokensAreRawText) {
  // deepseek-coder has "ü" as a user-defined token: raw text, not the byte
  // U+00FC would stand for.
  Vocab vocab = ByteVocab({"\u00FC"}, {});
  vocab.types[256] = TokenType::kUserDefined;
  const auto tokenizer = Make(std::move(vocab));
  EXPECT_THAT(Encode(*tokenizer, "F\u00FChrer"),
              ElementsAre('F', 256, 'h', 'r', 'e', 'r'));
  EXPECT_EQ(tokenizer->Decode(Encode(*tokenizer, "F\u00FChrer")),
            "F\u00FChrer");
}

TEST(BpeTokenizerTest, Errors) {
  const auto tokenizer = Make(ByteVocab({}, {}));
  const auto invalid = tokenizer->Encode("ab\xC3(", {});
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(invalid.status().message(), HasSubstr("byte 2"));
  EXPECT_EQ(tokenizer->Encode("a", AddBos()).status().code(),
            absl::StatusCode::kFailedPrecondition);

  const auto unknown_pre = NewBpeTokenizer(ByteVocab({}, {}, "gpt-9"));
  EXPECT_EQ(unknown_pre.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown_pre.status().message(), HasSubstr("gpt-9"));
  EXPECT_THAT(unknown_pre.status().message(), HasSubstr("llama-bpe"));

  Vocab spm = ByteVocab({}, {});
  spm.model = TokenizerModel::kSpm;
  EXPECT_EQ(NewBpeTokenizer(std::move(spm)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The textbook algorithm (OpenAI's encoder.py bpe()): find the best-ranked
// adjacent pair, merge all its occurrences left to right, repeat.
std::vector<std::string> NaiveBpe(
    const std::string& word,
    const std::map<std::pair<std::string, std::string>, int>& ranks) {
  std::vector<std::string> parts;
  for (const char c : word) parts.emplace_back(1, c);
  while (parts.size() > 1) {
    int best = INT32_MAX;
    std::pair<std::string, std::string> best_pair;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ranks.find({parts[i], parts[i + 1]});
      if (it != ranks.end() && it->second < best) {
        best = it->second;
        best_pair = it->first;
      }
    }
    if (best == INT32_MAX) break;
    std::vector<std::string> merged;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i + 1 < parts.size() && parts[i] == best_pair.first &&
          parts[i + 1] == best_pair.second) {
        merged.push_back(parts[i] + parts[i + 1]);
        ++i;
      } else {
        merged.push_back(parts[i]);
      }
    }
    parts.swap(merged);
  }
  return parts;
}

TEST(BpeTokenizerTest, MatchesTextbookBpeOnRandomMerges) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 50; ++trial) {
    // A merge list as training makes one: each merge joins two symbols that
    // exist by then, so a merge's result always ranks after its parts.
    std::vector<std::string> symbols = {"a", "b", "c", "d"};
    std::vector<std::string> extra;
    std::vector<std::string> merges;
    std::map<std::pair<std::string, std::string>, int> ranks;
    while (merges.size() < 40) {
      const std::string& left = symbols[rng() % symbols.size()];
      const std::string& right = symbols[rng() % symbols.size()];
      if (left.size() + right.size() > 8 || ranks.count({left, right})) {
        continue;
      }
      ranks[{left, right}] = static_cast<int>(merges.size());
      merges.push_back(left + " " + right);
      const std::string joined = left + right;
      if (std::find(symbols.begin(), symbols.end(), joined) == symbols.end()) {
        symbols.push_back(joined);
        extra.push_back(joined);
      }
    }
    const auto tokenizer = Make(ByteVocab(extra, merges));
    for (int i = 0; i < 100; ++i) {
      std::string word;
      for (int n = 1 + rng() % 16; n > 0; --n) word += "abcd"[rng() % 4];
      std::vector<int32_t> expected;
      for (const std::string& part : NaiveBpe(word, ranks)) {
        expected.push_back(
            part.size() == 1
                ? part[0]
                : 256 + static_cast<int32_t>(
                            std::find(extra.begin(), extra.end(), part) -
                            extra.begin()));
      }
      ASSERT_EQ(Encode(*tokenizer, word), expected)
          << "word " << word << " trial " << trial;
    }
  }
}

TEST(BpeTokenizerTest, RandomTextRoundTrips) {
  const auto tokenizer =
      Make(ByteVocab({"\u0120t", "he", "\u0120the"},
                     {"\u0120 t", "h e", "\u0120t he"}, "llama-bpe"));
  const std::vector<std::string> alphabet = {
      "a",      "e",      "h",          "t",      " ",      " ",
      "\n",     "\t",     "'",          "s",      "1",      "!",
      "\u00E9", "\u4E2D", "\U0001F999", "\u3000", "\u200D", "\r"};
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  for (int i = 0; i < 500; ++i) {
    std::string text;
    for (int n = 0; n < 30; ++n) text += alphabet[pick(rng)];
    EXPECT_EQ(tokenizer->Decode(Encode(*tokenizer, text)), text);
  }
}

// --- The reference vectors (llama.cpp's models/ggml-vocab-*.gguf.*). ------

std::string SharedDir() {
  const char* dir = std::getenv("SINKSERVE_SHARED");
  return dir == nullptr ? "" : dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

struct VectorFile {
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> expected;
};

// Loads NAME.gguf with its .inp/.out; skips the test without shared data.
std::unique_ptr<VectorFile> LoadVectors(const std::string& name) {
  auto v = std::make_unique<VectorFile>();
  const std::string base =
      absl::StrCat(SharedDir(), "/tokenizer-vectors/", name);
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(base);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return nullptr;
  v->gguf = *std::move(gguf);
  absl::StatusOr<Vocab> vocab = Vocab::FromGguf(*v->gguf);
  EXPECT_TRUE(vocab.ok()) << vocab.status();
  if (!vocab.ok()) return nullptr;
  v->tokenizer = Make(*std::move(vocab));
  if (v->tokenizer == nullptr) return nullptr;

  // Inputs are separated by the exact separator, which also ends the file.
  const absl::string_view kSeparator = "\n__ggml_vocab_test__\n";
  std::string inp = ReadFile(base + ".inp");
  EXPECT_TRUE(absl::EndsWith(inp, kSeparator));
  inp.resize(inp.size() - kSeparator.size());
  v->inputs = absl::StrSplit(inp, kSeparator);
  std::string out = ReadFile(base + ".out");
  EXPECT_TRUE(absl::EndsWith(out, "\n"));
  out.pop_back();
  for (const absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<int32_t> ids;
    for (const absl::string_view id :
         absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      ids.push_back(std::stoi(std::string(id)));
    }
    v->expected.push_back(std::move(ids));
  }
  EXPECT_EQ(v->inputs.size(), v->expected.size());
  return v;
}

class BpeVectorTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (SharedDir().empty()) GTEST_SKIP() << "SINKSERVE_SHARED is not set";
  }
};

TEST_P(BpeVectorTest, MatchesLlamaCppAndRoundTrips) {
  const std::unique_ptr<VectorFile> v = LoadVectors(GetParam());
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->inputs.size(), v->expected.size());
  ASSERT_GT(v->inputs.size(), 40u);
  for (size_t i = 0; i < v->inputs.size(); ++i) {
    const std::vector<int32_t> ids = Encode(*v->tokenizer, v->inputs[i]);
    EXPECT_EQ(ids, v->expected[i])
        << "input " << i << ": \"" << v->inputs[i] << "\"";
    EXPECT_EQ(v->tokenizer->Decode(ids), v->inputs[i]) << "input " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Files, BpeVectorTest,
                         ::testing::Values("ggml-vocab-gpt-2.gguf",
                                           "ggml-vocab-starcoder.gguf",
                                           "ggml-vocab-falcon.gguf",
                                           "ggml-vocab-deepseek-coder.gguf"));

// A megabyte of mixed text plus one 64 KiB piece with no break in it (merges
// on 64 KiB at once) round-trips. Its speed is measured by
// tests/bench/tokenizer_bench.cc, not asserted here.
TEST_P(BpeVectorTest, EncodesAMegabyteAndRoundTrips) {
  const std::unique_ptr<VectorFile> v = LoadVectors(GetParam());
  ASSERT_NE(v, nullptr);
  std::string text;
  while (text.size() < (1 << 20)) {
    for (const std::string& input : v->inputs) text += input;
  }
  text += std::string(1 << 16, 'a');
  const std::vector<int32_t> ids = Encode(*v->tokenizer, text);
  EXPECT_GT(ids.size(), text.size() / 16);  // the bulk is ordinary text
  EXPECT_LT(ids.size(), text.size());
  EXPECT_EQ(v->tokenizer->Decode(ids), text);
}

}  // namespace
}  // namespace sinkserve::engine
