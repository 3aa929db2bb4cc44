// Tokenizers on the shared vocab files. First llama.cpp's tokenizer test
// vectors (shared/tokenizer-vectors, see its README): every NAME.gguf there
// with NAME.gguf.inp / NAME.gguf.out, one parameterized test per vocab so a
// failure names the file. Then SPM checks on real vocabs: stories260K,
// special tokens in llama-spm and phi-3, and speed.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "engine/tokenizer/vocab.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

constexpr char kSeparator[] = "\n__ggml_vocab_test__\n";

// The vocabs the README promises; any other vector file found in the folder
// is tested too.
const char* const kKnownVocabs[] = {
    "ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",
    "ggml-vocab-gpt-2.gguf",     "ggml-vocab-starcoder.gguf",
    "ggml-vocab-falcon.gguf",    "ggml-vocab-deepseek-coder.gguf",
};

std::string VectorDir() {
  const char* shared = std::getenv("SINKSERVE_SHARED");
  return shared == nullptr ? "" : std::string(shared) + "/tokenizer-vectors";
}

std::vector<std::string> VocabNames() {
  std::vector<std::string> names(std::begin(kKnownVocabs),
                                 std::end(kKnownVocabs));
  std::error_code error;
  const std::string dir = VectorDir();
  if (dir.empty()) return names;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    const std::string file = entry.path().filename().string();
    const std::string suffix = ".gguf.inp";
    if (file.size() > suffix.size() &&
        file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string name = file.substr(0, file.size() - 4);  // drop .inp
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        names.push_back(name);
      }
    }
  }
  return names;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = buffer.str();
  return true;
}

struct Case {
  std::string input;
  std::vector<int32_t> expected;
};

class TokenizerVectors : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = VectorDir();
    if (dir.empty()) GTEST_SKIP() << "SINKSERVE_SHARED is not set";
    const std::string base = dir + "/" + GetParam();
    if (!std::filesystem::exists(base)) {
      GTEST_SKIP() << base << " is not there";
    }
    std::string inp, out;
    ASSERT_TRUE(ReadFile(base + ".inp", &inp)) << base << ".inp";
    ASSERT_TRUE(ReadFile(base + ".out", &out)) << base << ".out";
    // Inputs keep every character; the file ends with a separator, so the
    // last input is empty, and so is the .out line after its final newline.
    const std::vector<std::string> inputs = absl::StrSplit(inp, kSeparator);
    const std::vector<std::string> lines = absl::StrSplit(out, '\n');
    ASSERT_EQ(inputs.size(), lines.size()) << "inputs vs expected lines";
    for (size_t i = 0; i < inputs.size(); ++i) {
      Case c{inputs[i], {}};
      for (const absl::string_view field :
           absl::StrSplit(lines[i], ' ', absl::SkipEmpty())) {
        int32_t id;
        ASSERT_TRUE(absl::SimpleAtoi(field, &id)) << lines[i];
        c.expected.push_back(id);
      }
      cases_.push_back(std::move(c));
    }
    auto file = GgufFile::Open(base);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    auto tokenizer = Tokenizer::FromGguf(*file_);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
  }

  std::vector<Case> cases_;
  std::unique_ptr<GgufFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(TokenizerVectors, EncodesExactly) {
  ASSERT_FALSE(cases_.empty());
  // As the vectors were made: no BOS, no special-token parsing.
  const EncodeOptions options;
  for (size_t i = 0; i < cases_.size(); ++i) {
    const auto ids = tokenizer_->Encode(cases_[i].input, options);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(absl::StrJoin(*ids, " "), absl::StrJoin(cases_[i].expected, " "))
        << "input #" << i << ": \"" << cases_[i].input << "\"";
  }
}

// Neither llama.cpp tokenizer normalizes text, so decoding gives back the
// input exactly; SentencePiece's added leading space is removed by Decode,
// so inputs that start with spaces round-trip too.
TEST_P(TokenizerVectors, DecodeRoundTrips) {
  for (size_t i = 0; i < cases_.size(); ++i) {
    EXPECT_EQ(tokenizer_->Decode(cases_[i].expected), cases_[i].input)
        << "input #" << i;
  }
}

TEST_P(TokenizerVectors, StreamingMatchesDecode) {
  for (size_t i = 0; i < cases_.size(); ++i) {
    StreamingDetokenizer detokenizer(*tokenizer_, /*at_sequence_start=*/true);
    std::string text;
    for (const int32_t id : cases_[i].expected) {
      const std::string piece = detokenizer.Push(id);
      EXPECT_TRUE(IsValidUtf8(piece)) << "input #" << i;
      text += piece;
    }
    text += detokenizer.Finish();
    EXPECT_EQ(text, cases_[i].input) << "input #" << i;
  }
}

std::string TestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (const char* strip : {"ggml-vocab-", ".gguf"}) {
    const size_t pos = name.find(strip);
    if (pos != std::string::npos) name.erase(pos, std::string(strip).size());
  }
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(AllVocabs, TokenizerVectors,
                         ::testing::ValuesIn(VocabNames()), TestName);

// ------------------------------------------ other tests on shared vocabs ----

using ::testing::ElementsAre;

EncodeOptions WithSpecial() {
  EncodeOptions options;
  options.parse_special = true;
  return options;
}

EncodeOptions WithBos() {
  EncodeOptions options;
  options.add_bos = true;
  return options;
}

std::string SharedPath(const std::string& relative) {
  const char* dir = std::getenv("SINKSERVE_SHARED");
  return dir == nullptr ? "" : std::string(dir) + "/" + relative;
}

std::unique_ptr<GgufFile> OpenShared(const std::string& relative) {
  const std::string path = SharedPath(relative);
  if (path.empty() || !std::filesystem::exists(path)) return nullptr;
  auto file = GgufFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? *std::move(file) : nullptr;
}

TEST(Stories260K, VocabMetadata) {
  auto file = OpenShared("models/stories260K.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared stories260K.gguf";
  auto vocab = Vocab::FromGguf(*file);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->model, TokenizerModel::kSpm);
  EXPECT_EQ(vocab->pre, "default");
  EXPECT_EQ(vocab->tokens.size(), 512u);
  EXPECT_EQ(vocab->bos_id, 1);
  EXPECT_EQ(vocab->eos_id, 2);
  EXPECT_EQ(vocab->unk_id, 0);
  EXPECT_EQ(vocab->pad_id, -1);  // stored as uint32 0xFFFFFFFF
  // The file has no add_* keys: llama.cpp's SPM defaults apply.
  EXPECT_TRUE(vocab->add_bos);
  EXPECT_FALSE(vocab->add_eos);
  EXPECT_TRUE(vocab->add_space_prefix);
  EXPECT_EQ(vocab->types[0], TokenType::kUnknown);
  EXPECT_EQ(vocab->types[1], TokenType::kControl);
  EXPECT_EQ(vocab->types[3], TokenType::kByte);
}

TEST(Stories260K, OnceUponATime) {
  auto file = OpenShared("models/stories260K.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared stories260K.gguf";
  auto tok = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Derived from the vocab by hand: "▁Once▁upon▁a▁time" has whole-word
  // pieces ▁Once (403), ▁upon (407), ▁a (261) and ▁time (378), and each is
  // reachable by best-score merges (▁O+n -> ▁On, c+e -> ce, ▁On+ce; ▁u+p ->
  // ▁up, o+n -> on, ▁up+on; ▁t+(i+m -> im, +e -> ime)). llama2.c's
  // tokenizer gives the same ids for this prompt.
  EXPECT_EQ((*tok)->vocab().tokens[403], "▁Once");
  EXPECT_EQ((*tok)->vocab().tokens[407], "▁upon");
  EXPECT_EQ((*tok)->vocab().tokens[261], "▁a");
  EXPECT_EQ((*tok)->vocab().tokens[378], "▁time");
  const auto ids = (*tok)->Encode("Once upon a time", WithBos());
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1, 403, 407, 261, 378));
  EXPECT_EQ((*tok)->Decode(*ids), "Once upon a time");
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& part : parts)
    out.insert(out.end(), part.begin(), part.end());
  return out;
}

TEST(LlamaSpm, ParseSpecial) {
  auto file = OpenShared("tokenizer-vectors/ggml-vocab-llama-spm.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared llama-spm vocab";
  auto made = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(made.ok()) << made.status();
  const Tokenizer& tok = **made;
  // 15043 is "▁Hello" (the vectors encode "Hello" to it).
  EXPECT_THAT(*tok.Encode("<s>Hello", WithSpecial()), ElementsAre(1, 15043));
  EXPECT_THAT(*tok.Encode("Hello</s>", WithSpecial()), ElementsAre(15043, 2));
  // Without parse_special the same text is just text.
  const auto plain = tok.Encode("<s>Hello", {});
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, ::testing::Not(::testing::Contains(1)));
  EXPECT_EQ(tok.Decode(*plain), "<s>Hello");
  // Control tokens decode to nothing unless asked for.
  EXPECT_EQ(tok.Decode({1, 15043, 2}), "Hello");
  EXPECT_EQ(tok.TokenBytes(2, /*render_special=*/true), "</s>");
}

TEST(Phi3, UserDefinedTokenIsMatchedWithoutParseSpecial) {
  auto file = OpenShared("tokenizer-vectors/ggml-vocab-phi-3.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared phi-3 vocab";
  auto made = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(made.ok()) << made.status();
  const Tokenizer& tok = **made;
  // phi-3 marks "</s>" (id 2) user-defined and its chat tokens control.
  ASSERT_EQ(tok.vocab().types[2], TokenType::kUserDefined);
  ASSERT_EQ(tok.vocab().tokens[32007], "<|end|>");
  ASSERT_EQ(tok.vocab().types[32007], TokenType::kControl);
  // Each side of a special token is encoded as its own text, prefix and all.
  const auto ids = tok.Encode("Hi</s>there", {});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids,
            Concat({*tok.Encode("Hi", {}), {2}, *tok.Encode("there", {})}));
  EXPECT_EQ(tok.Decode(*ids), "Hi</s> there");  // the prefix is real text
  // A control token needs parse_special.
  EXPECT_THAT(*tok.Encode("Hi<|end|>", {}),
              ::testing::Not(::testing::Contains(32007)));
  EXPECT_EQ(*tok.Encode("Hi<|end|>", WithSpecial()),
            Concat({*tok.Encode("Hi", {}), {32007}}));
}

// llama.cpp gives Phi-3's special tokens RSTRIP by the model's general.name
// ("Phi3" here): whitespace after a matched "</s>" is dropped, so the next
// text's own SentencePiece prefix is its only space. Found against
// llama.cpp: "</s> <" is 2, 529 ("▁<"), not 2, 29871 ("▁"), 529.
TEST(Phi3, SpecialTokensSwallowTheWhitespaceAfterThem) {
  auto file = OpenShared("tokenizer-vectors/ggml-vocab-phi-3.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared phi-3 vocab";
  absl::StatusOr<Vocab> vocab = Vocab::FromGguf(*file);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_TRUE(std::binary_search(vocab->rstrip_ids.begin(), vocab->rstrip_ids.end(), 2));
  EXPECT_TRUE(std::binary_search(vocab->rstrip_ids.begin(), vocab->rstrip_ids.end(), 32007));
  EXPECT_FALSE(std::binary_search(vocab->rstrip_ids.begin(), vocab->rstrip_ids.end(), 1));
  auto made = Tokenizer::FromVocab(*vocab);
  ASSERT_TRUE(made.ok()) << made.status();
  const Tokenizer& tok = **made;
  EXPECT_EQ(*tok.Encode("</s> <", {}), (std::vector<int32_t>{2, 529}));
  EXPECT_EQ(*tok.Encode("Hi</s> \t\n there", {}),
            Concat({*tok.Encode("Hi", {}), {2}, *tok.Encode("there", {})}));
  // Whitespace before the token stays (no LSTRIP), and a control token
  // strips too when special tokens are parsed.
  EXPECT_EQ(*tok.Encode("Hi <|end|> ok", WithSpecial()),
            Concat({*tok.Encode("Hi ", {}), {32007}, *tok.Encode("ok", {})}));
  // Nothing to strip at the end.
  EXPECT_EQ(*tok.Encode("a</s>  ", {}), Concat({*tok.Encode("a", {}), {2}}));
  // The same vocabulary under another name keeps the whitespace.
  Vocab plain = *vocab;
  plain.rstrip_ids.clear();
  auto unnamed = Tokenizer::FromVocab(plain);
  ASSERT_TRUE(unnamed.ok());
  EXPECT_EQ(*(*unnamed)->Encode("</s> <", {}), (std::vector<int32_t>{2, 29871, 529}));
}

// A megabyte of pseudo-random words and one unbroken megabyte word (the worst
// case: a million-entry merge heap) round-trip. Their speed is measured by
// tests/bench/tokenizer_bench.cc, not asserted here.
TEST(LlamaSpm, MegabyteInputsRoundTrip) {
  auto file = OpenShared("tokenizer-vectors/ggml-vocab-llama-spm.gguf");
  if (file == nullptr) GTEST_SKIP() << "no shared llama-spm vocab";
  auto tok = Tokenizer::FromGguf(*file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Pseudo-random words, so few repeat, with some multi-byte characters.
  std::string words;
  uint32_t x = 12345;
  auto next = [&x] { return x = x * 1664525u + 1013904223u; };
  while (words.size() < (1 << 20)) {
    const int len = 1 + (next() >> 28) % 10;
    for (int i = 0; i < len; ++i) {
      const uint32_t r = next() >> 24;
      if (r < 8) {
        words += "\xC3\xA9";  // é
      } else if (r < 10) {
        words += "\xF0\x9F\xA6\x99";  // 🦙, byte fallback
      } else {
        words.push_back(static_cast<char>('a' + r % 26));
      }
    }
    words.push_back((next() >> 24) < 16 ? '\n' : ' ');
  }
  const auto ids = (*tok)->Encode(words, {});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ((*tok)->Decode(*ids), words);

  const std::string run(1 << 20, 'a');
  const auto run_ids = (*tok)->Encode(run, {});
  ASSERT_TRUE(run_ids.ok()) << run_ids.status();
  EXPECT_EQ((*tok)->Decode(*run_ids), run);
}

}  // namespace
}  // namespace sinkserve::engine
