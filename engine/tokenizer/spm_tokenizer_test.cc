// The SentencePiece tokenizer, the tokenizer framework (factory, Decode,
// StreamingDetokenizer, special-token splitting), Vocab::FromGguf and the
// UTF-8 helpers, on vocabs built here. Tests on the shared vocab files
// (llama.cpp's vectors, stories260K) are in tokenizer_vectors_test.
#include "engine/tokenizer/spm_tokenizer.h"

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"
#include "engine/tokenizer/vocab.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// ---------------------------------------------------------------- UTF-8 ----

TEST(Utf8, SequenceLength) {
  EXPECT_EQ(Utf8SequenceLength('A'), 1);
  EXPECT_EQ(Utf8SequenceLength(0xC3), 2);
  EXPECT_EQ(Utf8SequenceLength(0xE2), 3);
  EXPECT_EQ(Utf8SequenceLength(0xF0), 4);
  EXPECT_EQ(Utf8SequenceLength(0x80), 0);  // continuation
  EXPECT_EQ(Utf8SequenceLength(0xC1), 0);  // only overlong forms
  EXPECT_EQ(Utf8SequenceLength(0xF5), 0);  // beyond U+10FFFF
}

TEST(Utf8, Validity) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9llo \xF0\x9F\xA6\x99"));  // héllo 🦙
  EXPECT_TRUE(IsValidUtf8("\xEF\xBF\xBD"));       // U+FFFD itself is fine
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(IsValidUtf8("a\x80"));             // stray continuation
  EXPECT_EQ(FirstInvalidUtf8("ab\xFF"
                             "c"),
            2u);
}

TEST(Utf8, DecodeReplacesMaximalSubparts) {
  EXPECT_THAT(DecodeUtf8("a\xF0\x9F\xA6\x99"), ElementsAre('a', 0x1F999u));
  // E2 82 is the start of a 3-byte character cut short: one U+FFFD.
  EXPECT_THAT(DecodeUtf8("a\xE2\x82"
                         "b"),
              ElementsAre('a', 0xFFFDu, 'b'));
  // F0 cannot be followed by 80, so each byte is its own bad subpart
  // (Python's errors="replace" agrees).
  EXPECT_THAT(DecodeUtf8("\xF0\x80"), ElementsAre(0xFFFDu, 0xFFFDu));
}

TEST(Utf8, EncodeRoundTrips) {
  for (const uint32_t cp : {0x0u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFFu,
                            0x10000u, 0x1F999u, 0x10FFFFu}) {
    const std::string s = EncodeUtf8(cp);
    EXPECT_TRUE(IsValidUtf8(s)) << cp;
    EXPECT_THAT(DecodeUtf8(s), ElementsAre(cp));
  }
  EXPECT_EQ(EncodeUtf8(0xD800), "\xEF\xBF\xBD");
  EXPECT_EQ(EncodeUtf8(0x110000), "\xEF\xBF\xBD");
}

TEST(Utf8, IncompleteSuffix) {
  EXPECT_EQ(IncompleteUtf8Suffix(""), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0"), 1u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x9F"), 2u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x9F\xA6"), 3u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x9F\xA6\x99"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x80"), 0u);  // can never complete
  EXPECT_EQ(IncompleteUtf8Suffix("\x80"), 0u);
}

TEST(Utf8, Sanitize) {
  EXPECT_EQ(SanitizeUtf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(SanitizeUtf8("a\xFF"
                         "b\xE2\x82"),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD");
}

// ------------------------------------------------------ toy SPM vocabs ----

// <unk> <s> </s> [<0x00>..<0xFF>] then `pieces` with their scores.
Vocab ToyVocab(const std::vector<std::pair<std::string, float>>& pieces,
               bool byte_tokens = true) {
  Vocab v;
  v.model = TokenizerModel::kSpm;
  auto add = [&v](std::string text, TokenType type, float score) {
    v.tokens.push_back(std::move(text));
    v.types.push_back(type);
    v.scores.push_back(score);
  };
  add("<unk>", TokenType::kUnknown, 0);
  add("<s>", TokenType::kControl, 0);
  add("</s>", TokenType::kControl, 0);
  if (byte_tokens) {
    for (int b = 0; b < 256; ++b) {
      add(absl::StrFormat("<0x%02X>", b), TokenType::kByte, 0);
    }
  }
  for (const auto& [text, score] : pieces) add(text, TokenType::kNormal, score);
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

int32_t Id(const Tokenizer& tok, std::string_view text) {
  const auto& tokens = tok.vocab().tokens;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] == text) return static_cast<int32_t>(i);
  }
  ADD_FAILURE() << "no token " << text;
  return -1;
}

std::vector<std::string> Pieces(const Tokenizer& tok,
                                const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (const int32_t id : ids) out.push_back(tok.vocab().tokens.at(id));
  return out;
}

std::unique_ptr<Tokenizer> MustMake(Vocab vocab) {
  auto tok = Tokenizer::FromVocab(std::move(vocab));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::vector<std::string> EncodePieces(const Tokenizer& tok,
                                      std::string_view text,
                                      EncodeOptions options = {}) {
  auto ids = tok.Encode(text, options);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? Pieces(tok, *ids) : std::vector<std::string>{"<error>"};
}

EncodeOptions WithBos() {
  EncodeOptions options;
  options.add_bos = true;
  return options;
}

EncodeOptions WithSpecial() {
  EncodeOptions options;
  options.parse_special = true;
  return options;
}

const std::vector<std::pair<std::string, float>> kAbcPieces = {
    {"▁", -10}, {"a", -10}, {"b", -10}, {"c", -10},
    {"▁a", -1}, {"ab", -2}, {"bc", -3}};

TEST(Spm, MergesHighestScoreFirst) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  // "▁abc": ▁a (-1) beats ab (-2); "▁ab" is no piece, so bc (-3) follows.
  EXPECT_THAT(EncodePieces(*tok, "abc"), ElementsAre("▁a", "bc"));
}

TEST(Spm, EqualScoresMergeLeftmostFirst) {
  Vocab v =
      ToyVocab({{"a", -10}, {"b", -10}, {"c", -10}, {"ab", -1}, {"bc", -1}});
  v.add_space_prefix = false;
  auto tok = MustMake(std::move(v));
  EXPECT_THAT(EncodePieces(*tok, "abc"), ElementsAre("ab", "c"));
  EXPECT_THAT(EncodePieces(*tok, "bcab"), ElementsAre("bc", "ab"));
}

TEST(Spm, SpacesBecomeMarkers) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  EXPECT_THAT(EncodePieces(*tok, "a a"), ElementsAre("▁a", "▁a"));
  EXPECT_THAT(EncodePieces(*tok, " a"), ElementsAre("▁", "▁a"));
}

// Words are merged one by one only when no piece could span two; a piece
// with "▁" inside must still be found across the space.
TEST(Spm, PiecesAcrossSpacesStillMerge) {
  auto tok = MustMake(ToyVocab({{"▁", -10},
                                {"a", -10},
                                {"b", -10},
                                {"▁a", -1},
                                {"a▁", -0.5},
                                {"a▁b", -0.4}}));
  EXPECT_THAT(EncodePieces(*tok, "a b"), ElementsAre("▁", "a▁b"));
  EXPECT_THAT(EncodePieces(*tok, "a b a b"),
              ElementsAre("▁", "a▁b", "▁", "a▁b"));
}

TEST(Spm, RepeatedWordsEncodeTheSame) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  EXPECT_THAT(EncodePieces(*tok, "abc abc  abc\xC3\xA9 abc\xC3\xA9"),
              ElementsAre("▁a", "bc", "▁a", "bc", "▁", "▁a", "bc", "<0xC3>",
                          "<0xA9>", "▁a", "bc", "<0xC3>", "<0xA9>"));
}

TEST(Spm, NoSpacePrefixWhenVocabSaysSo) {
  Vocab v = ToyVocab(kAbcPieces);
  v.add_space_prefix = false;
  auto tok = MustMake(std::move(v));
  EXPECT_THAT(EncodePieces(*tok, "abc"), ElementsAre("ab", "c"));
}

TEST(Spm, ByteFallbackForCharactersOutsideTheVocab) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  EXPECT_THAT(EncodePieces(*tok, "a\xC3\xA9"),  // "aé"
              ElementsAre("▁a", "<0xC3>", "<0xA9>"));
}

TEST(Spm, UnkWithoutByteTokens) {
  auto tok = MustMake(ToyVocab(kAbcPieces, /*byte_tokens=*/false));
  // One <unk> per unknown character, not per byte.
  EXPECT_THAT(EncodePieces(*tok,
                           "a\xC3\xA9"
                           "b"),
              ElementsAre("▁a", "<unk>", "b"));
}

TEST(Spm, NoByteTokensAndNoUnkIsAnError) {
  Vocab v = ToyVocab(kAbcPieces, /*byte_tokens=*/false);
  v.unk_id = -1;
  auto tok = MustMake(std::move(v));
  EXPECT_EQ(tok->Encode("x", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Spm, BosAndEmptyText) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  EXPECT_THAT(*tok->Encode("", {}), IsEmpty());
  EXPECT_THAT(*tok->Encode("", WithBos()), ElementsAre(1));
  EXPECT_THAT(EncodePieces(*tok, "a", WithBos()), ElementsAre("<s>", "▁a"));
}

TEST(Spm, InvalidUtf8IsRejected) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  const auto ids = tok->Encode("ab\xC3", {});
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.status().message(), HasSubstr("UTF-8"));
  EXPECT_FALSE(tok->Encode("\xED\xA0\x80", {}).ok());  // surrogate
}

TEST(Spm, ControlTokensOnlyWithParseSpecial) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  // Without parse_special "<s>" is plain text: byte fallback, no BOS id.
  EXPECT_THAT(EncodePieces(*tok, "a<s>b"),
              ElementsAre("▁a", "<0x3C>", "<0x73>", "<0x3E>", "b"));
  // With it, the text after a special token gets its own space prefix, as in
  // llama.cpp and HF's slow tokenizer.
  EXPECT_THAT(EncodePieces(*tok, "a<s>b", WithSpecial()),
              ElementsAre("▁a", "<s>", "▁", "b"));
  EXPECT_THAT(EncodePieces(*tok, "<s>a</s>", WithSpecial()),
              ElementsAre("<s>", "▁a", "</s>"));
  // <unk> is special too (llama.cpp matches unknown-type tokens).
  EXPECT_THAT(EncodePieces(*tok, "<unk>", WithSpecial()), ElementsAre("<unk>"));
}

TEST(Spm, UserDefinedTokensAlwaysMatch) {
  Vocab v = ToyVocab(kAbcPieces);
  v.tokens.push_back("<|u|>");
  v.types.push_back(TokenType::kUserDefined);
  v.scores.push_back(0);
  auto tok = MustMake(std::move(v));
  EXPECT_THAT(EncodePieces(*tok, "a<|u|>a"), ElementsAre("▁a", "<|u|>", "▁a"));
  EXPECT_THAT(EncodePieces(*tok, "<|u|>"), ElementsAre("<|u|>"));
}

TEST(Spm, LongestSpecialTokenWins) {
  Vocab v = ToyVocab(kAbcPieces);
  for (const char* text : {"<x>", "<x><y>", "<y>"}) {
    v.tokens.push_back(text);
    v.types.push_back(TokenType::kControl);
    v.scores.push_back(0);
  }
  auto tok = MustMake(std::move(v));
  EXPECT_THAT(EncodePieces(*tok, "<x><y><x>a<y>", WithSpecial()),
              ElementsAre("<x><y>", "<x>", "▁a", "<y>"));
}

TEST(SpecialTokenSplitter, FragmentsCoverTheInput) {
  Vocab v = ToyVocab(kAbcPieces);
  const SpecialTokenSplitter splitter(v);
  const std::string text = "x<s>y</s></s>z";
  std::string joined;
  std::vector<int32_t> tokens;
  for (const TextFragment& f : splitter.Split(text, true)) {
    EXPECT_FALSE(f.text.empty());
    joined += f.text;
    tokens.push_back(f.token);
  }
  EXPECT_EQ(joined, text);
  EXPECT_THAT(tokens, ElementsAre(-1, 1, -1, 2, 2, -1));
  EXPECT_THAT(splitter.Split("", true), IsEmpty());
  EXPECT_EQ(splitter.Split(text, false).size(), 1u);
}

TEST(Spm, TokenBytes) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  EXPECT_EQ(tok->TokenBytes(Id(*tok, "▁a"), false), " a");
  EXPECT_EQ(tok->TokenBytes(Id(*tok, "<0x0A>"), false), "\n");
  EXPECT_EQ(tok->TokenBytes(Id(*tok, "<0xF0>"), false), "\xF0");
  EXPECT_EQ(tok->TokenBytes(1, false), "");
  EXPECT_EQ(tok->TokenBytes(1, true), "<s>");
  EXPECT_EQ(tok->TokenBytes(0, false), "");
  EXPECT_EQ(tok->TokenBytes(-1, true), "");
  EXPECT_EQ(tok->TokenBytes(100000, true), "");
}

TEST(Spm, DecodeStripsTheAddedSpace) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  for (const char* text : {"abc", "a bc", " a", "  abc ", "\xC3\xA9 a", ""}) {
    const auto ids = tok->Encode(text, WithBos());
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(tok->Decode(*ids), text);
  }
  EXPECT_EQ(tok->Decode({Id(*tok, "▁a"), Id(*tok, "▁a")}), "a a");
}

// ----------------------------------------------------- streaming decode ----

TEST(StreamingDetokenizer, HoldsBackSplitCharacters) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  StreamingDetokenizer detok(*tok, /*at_sequence_start=*/true);
  EXPECT_EQ(detok.Push(1), "");              // BOS renders nothing
  EXPECT_EQ(detok.Push(Id(*tok, "▁")), "");  // the added space, stripped
  // 🦙 = F0 9F A6 99 through byte fallback.
  EXPECT_EQ(detok.Push(Id(*tok, "<0xF0>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "<0x9F>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "<0xA6>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "<0x99>")), "\xF0\x9F\xA6\x99");
  EXPECT_EQ(detok.Push(Id(*tok, "▁a")), " a");
  EXPECT_EQ(detok.Finish(), "");
}

TEST(StreamingDetokenizer, CompletePrefixIsEmittedAtOnce) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  StreamingDetokenizer detok(*tok, /*at_sequence_start=*/false);
  EXPECT_EQ(detok.Push(Id(*tok, "▁a")), " a");  // not at start: space kept
  EXPECT_EQ(detok.Push(Id(*tok, "<0xC3>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "<0xA9>")), "\xC3\xA9");
  EXPECT_EQ(detok.Push(Id(*tok, "<0xE2>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "bc")),
            "\xEF\xBF\xBD"
            "bc");  // cut short
}

TEST(StreamingDetokenizer, FinishReplacesAnIncompleteCharacter) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  StreamingDetokenizer detok(*tok, /*at_sequence_start=*/false);
  EXPECT_EQ(detok.Push(Id(*tok, "<0xF0>")), "");
  EXPECT_EQ(detok.Push(Id(*tok, "<0x9F>")), "");
  EXPECT_EQ(detok.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.Finish(), "");
}

TEST(StreamingDetokenizer, BytesThatCanNeverCompleteAreReplacedAtOnce) {
  auto tok = MustMake(ToyVocab(kAbcPieces));
  StreamingDetokenizer detok(*tok, /*at_sequence_start=*/false);
  EXPECT_EQ(detok.Push(Id(*tok, "<0x80>")), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.Push(Id(*tok, "<0xFF>")), "\xEF\xBF\xBD");
}

// ------------------------------------------------------------ factory ----

TEST(Tokenizer, FromVocabValidates) {
  Vocab v = ToyVocab(kAbcPieces);
  v.scores.pop_back();
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(),
            absl::StatusCode::kInvalidArgument);
  v = ToyVocab(kAbcPieces);
  v.bos_id = static_cast<int32_t>(v.tokens.size());
  EXPECT_EQ(Tokenizer::FromVocab(v).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromVocab(Vocab{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Tokenizer, VocabWithoutTypesOrScores) {
  Vocab v;
  v.tokens = {"▁", "a", "▁a"};
  v.add_space_prefix = true;
  auto tok = MustMake(std::move(v));
  EXPECT_THAT(*tok->Encode("a", {}), ElementsAre(2));
  EXPECT_EQ(tok->Decode({2, 2}), "a a");
}

// ------------------------------------------------- Vocab::FromGguf ----

// Vocab::FromGguf on small files written here.
class VocabFromGgufTest : public ::testing::Test {
 protected:
  absl::StatusOr<Vocab> Load(GgufWriter& writer) {
    const std::string path =
        ::testing::TempDir() + "/vocab_" +
        ::testing::UnitTest::GetInstance()->current_test_info()->name() +
        ".gguf";
    if (absl::Status s = writer.Write(path); !s.ok()) return s;
    auto file = GgufFile::Open(path);
    std::filesystem::remove(path);
    if (!file.ok()) return file.status();
    return Vocab::FromGguf(**file);
  }
  const std::vector<std::string> tokens_ = {"<unk>", "<s>", "</s>", "a", "b"};
};

TEST_F(VocabFromGgufTest, UnknownModelIsNamed) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "bert");
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  const auto vocab = Load(w);
  EXPECT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(vocab.status().message(), HasSubstr("bert"));
  EXPECT_THAT(vocab.status().message(), HasSubstr("gpt2"));
}

TEST_F(VocabFromGgufTest, MissingModel) {
  GgufWriter w;
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  EXPECT_EQ(Load(w).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VocabFromGgufTest, SpmDefaults) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  const auto vocab = Load(w);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->pre, "default");
  EXPECT_EQ(vocab->bos_id, 1);
  EXPECT_EQ(vocab->eos_id, 2);
  EXPECT_EQ(vocab->unk_id, 0);
  EXPECT_TRUE(vocab->add_bos);
  EXPECT_TRUE(vocab->add_space_prefix);
  EXPECT_THAT(vocab->scores, IsEmpty());
  EXPECT_EQ(vocab->types.size(), tokens_.size());
  EXPECT_EQ(vocab->types[0], TokenType::kNormal);
}

TEST_F(VocabFromGgufTest, BpeReadsMergesAndFlags) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddString("tokenizer.ggml.pre", "gpt-2");
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  w.AddStringArray("tokenizer.ggml.merges", std::vector<std::string>{"a b"});
  w.AddInt32Array("tokenizer.ggml.token_type",
                  std::vector<int32_t>{2, 3, 3, 1, 4});
  w.AddUint32("tokenizer.ggml.eos_token_id", 2);
  w.AddBool("tokenizer.ggml.add_bos_token", true);
  w.AddString("tokenizer.chat_template", "{{ x }}");
  const auto vocab = Load(w);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_EQ(vocab->model, TokenizerModel::kBpe);
  EXPECT_EQ(vocab->pre, "gpt-2");
  EXPECT_THAT(vocab->merges, ElementsAre("a b"));
  EXPECT_EQ(vocab->types[4], TokenType::kUserDefined);
  EXPECT_EQ(vocab->eos_id, 2);
  EXPECT_EQ(vocab->bos_id, -1);  // default 11 does not fit 5 tokens
  EXPECT_TRUE(vocab->add_bos);
  EXPECT_FALSE(vocab->add_space_prefix);
  EXPECT_EQ(vocab->chat_template, "{{ x }}");
}

TEST_F(VocabFromGgufTest, BpeWithoutMergesFails) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "gpt2");
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  EXPECT_EQ(Load(w).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VocabFromGgufTest, CountsAndIdsAreChecked) {
  {
    GgufWriter w;
    w.AddString("tokenizer.ggml.model", "llama");
    const auto vocab = Load(w);
    EXPECT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(vocab.status().message(), HasSubstr("tokenizer.ggml.tokens"));
  }
  {
    GgufWriter w;
    w.AddString("tokenizer.ggml.model", "llama");
    w.AddStringArray("tokenizer.ggml.tokens", tokens_);
    w.AddFloat32Array("tokenizer.ggml.scores", std::vector<float>{0, 0});
    EXPECT_EQ(Load(w).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    GgufWriter w;
    w.AddString("tokenizer.ggml.model", "llama");
    w.AddStringArray("tokenizer.ggml.tokens", tokens_);
    w.AddInt32Array("tokenizer.ggml.token_type",
                    std::vector<int32_t>{1, 1, 1, 1, 9});
    EXPECT_EQ(Load(w).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    GgufWriter w;
    w.AddString("tokenizer.ggml.model", "llama");
    w.AddStringArray("tokenizer.ggml.tokens", tokens_);
    w.AddUint32("tokenizer.ggml.bos_token_id", 5);
    const auto vocab = Load(w);
    EXPECT_EQ(vocab.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(vocab.status().message(), HasSubstr("bos_token_id"));
  }
  {
    GgufWriter w;
    w.AddString("tokenizer.ggml.model", "llama");
    w.AddStringArray("tokenizer.ggml.tokens", tokens_);
    w.AddString("tokenizer.ggml.add_bos_token", "yes");  // wrong kind
    EXPECT_EQ(Load(w).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(VocabFromGgufTest, AddSpacePrefixCanBeTurnedOff) {
  GgufWriter w;
  w.AddString("tokenizer.ggml.model", "llama");
  w.AddStringArray("tokenizer.ggml.tokens", tokens_);
  w.AddBool("tokenizer.ggml.add_space_prefix", false);
  w.AddBool("tokenizer.ggml.add_bos_token", false);
  w.AddInt32("tokenizer.ggml.padding_token_id", -1);
  const auto vocab = Load(w);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  EXPECT_FALSE(vocab->add_space_prefix);
  EXPECT_FALSE(vocab->add_bos);
  EXPECT_EQ(vocab->pad_id, -1);
}

}  // namespace
}  // namespace sinkserve::engine
