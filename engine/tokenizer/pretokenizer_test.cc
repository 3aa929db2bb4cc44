#include "engine/tokenizer/pretokenizer.h"

#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode_data.h"
#include "engine/tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "re2/re2.h"

namespace sinkserve::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Pieces = std::vector<std::string>;

Pieces Split(std::string_view name, std::string_view text) {
  absl::StatusOr<PreTokenizer> pre = PreTokenizer::ForName(name);
  EXPECT_TRUE(pre.ok()) << pre.status();
  if (!pre.ok()) return {};
  Pieces pieces;
  for (const std::string_view piece : pre->Split(text)) {
    pieces.emplace_back(piece);
  }
  return pieces;
}

// --- Hand-derived cases: each expectation worked out from the regex. -------

TEST(PreTokenizerTest, Gpt2WordsAndSpaces) {
  EXPECT_THAT(Split("gpt-2", "Hello world"), ElementsAre("Hello", " world"));
  // A space run before a word gives its last space to the word.
  EXPECT_THAT(Split("gpt-2", "Hello  world"),
              ElementsAre("Hello", " ", " world"));
  EXPECT_THAT(Split("gpt-2", "a   b"), ElementsAre("a", "  ", " b"));
  // At the end nothing follows, so the run stays whole.
  EXPECT_THAT(Split("gpt-2", "Hello   "), ElementsAre("Hello", "   "));
  EXPECT_THAT(Split("gpt-2", " "), ElementsAre(" "));
  EXPECT_THAT(Split("gpt-2", "   "), ElementsAre("   "));
  // Only ' ' joins a word; a tab is left alone as \s+.
  EXPECT_THAT(Split("gpt-2", "  \tx"), ElementsAre("  ", "\t", "x"));
  EXPECT_THAT(Split("gpt-2", "a \n b"), ElementsAre("a", " \n", " b"));
  EXPECT_THAT(Split("gpt-2", "\n\nfoo"), ElementsAre("\n", "\n", "foo"));
  EXPECT_THAT(Split("gpt-2", "a\r\nb"), ElementsAre("a", "\r", "\n", "b"));
  EXPECT_THAT(Split("gpt-2", "\r\n"), ElementsAre("\r\n"));
  EXPECT_THAT(Split("gpt-2", ""), ElementsAre());
}

TEST(PreTokenizerTest, Gpt2Contractions) {
  EXPECT_THAT(Split("gpt-2", "I'm"), ElementsAre("I", "'m"));
  EXPECT_THAT(Split("gpt-2", "we'll've"), ElementsAre("we", "'ll", "'ve"));
  EXPECT_THAT(Split("gpt-2", "it's'"), ElementsAre("it", "'s", "'"));
  EXPECT_THAT(Split("gpt-2", "'sup"), ElementsAre("'s", "up"));
  // GPT-2's contractions are lowercase only.
  EXPECT_THAT(Split("gpt-2", "DON'T"), ElementsAre("DON", "'", "T"));
  // The punctuation run is greedy and takes the second apostrophe too.
  EXPECT_THAT(Split("gpt-2", "''s"), ElementsAre("''", "s"));
}

TEST(PreTokenizerTest, Gpt2NumbersSymbolsAndScripts) {
  EXPECT_THAT(Split("gpt-2", "123abc"), ElementsAre("123", "abc"));
  EXPECT_THAT(Split("gpt-2", " 123"), ElementsAre(" 123"));
  EXPECT_THAT(Split("gpt-2", "1,000"), ElementsAre("1", ",", "000"));
  EXPECT_THAT(Split("gpt-2", "hello!!! ?"), ElementsAre("hello", "!!!", " ?"));
  EXPECT_THAT(Split("gpt-2", " this is \U0001F999.cpp"),
              ElementsAre(" this", " is", " \U0001F999.", "cpp"));
  EXPECT_THAT(Split("gpt-2", "\u4F60\u597D \u4E16\u754C"),
              ElementsAre("\u4F60\u597D", " \u4E16\u754C"));
  // Other numbers (No, Nl) are \p{N}; a combining mark is not \p{L}.
  EXPECT_THAT(Split("gpt-2", "x\u00B2\u00BD\u216Bz"),
              ElementsAre("x", "\u00B2\u00BD\u216B", "z"));
  EXPECT_THAT(Split("gpt-2", "e\u0301t"), ElementsAre("e", "\u0301", "t"));
  // Non-ASCII spaces are \s but never the optional ' '.
  EXPECT_THAT(Split("gpt-2", "x\u00A0y"), ElementsAre("x", "\u00A0", "y"));
  EXPECT_THAT(Split("gpt-2", "x\u3000 y"), ElementsAre("x", "\u3000", " y"));
  EXPECT_THAT(Split("gpt-2", "\U0001F680 (normal)"),
              ElementsAre("\U0001F680", " (", "normal", ")"));
}

TEST(PreTokenizerTest, Llama3) {
  const std::string_view kL3 = "llama-bpe";
  EXPECT_THAT(Split(kL3, "Hello world"), ElementsAre("Hello", " world"));
  // Contractions in any case.
  EXPECT_THAT(Split(kL3, "I'M"), ElementsAre("I", "'M"));
  EXPECT_THAT(Split(kL3, "YOU'LL it's"),
              ElementsAre("YOU", "'LL", " it", "'s"));
  EXPECT_THAT(Split(kL3, "'sup"), ElementsAre("'s", "up"));
  EXPECT_THAT(Split(kL3, "'hello"), ElementsAre("'hello"));
  // Digits in groups of three from the left.
  EXPECT_THAT(Split(kL3, "1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Split(kL3, " 12"), ElementsAre(" ", "12"));
  EXPECT_THAT(Split(kL3, "3rd"), ElementsAre("3", "rd"));
  EXPECT_THAT(Split(kL3, ".5"), ElementsAre(".", "5"));
  // Any one non-letter, non-digit, non-newline character leads a word.
  EXPECT_THAT(Split(kL3, "(hello)"), ElementsAre("(hello", ")"));
  EXPECT_THAT(Split(kL3, "\tword"), ElementsAre("\tword"));
  EXPECT_THAT(Split(kL3, "\nword"), ElementsAre("\n", "word"));
  // Newlines: up to the last newline of a space run, then as usual.
  EXPECT_THAT(Split(kL3, "hello\n\nworld"),
              ElementsAre("hello", "\n\n", "world"));
  EXPECT_THAT(Split(kL3, "hello \n world"),
              ElementsAre("hello", " \n", " world"));
  EXPECT_THAT(Split(kL3, "a \n\n  \n  b"),
              ElementsAre("a", " \n\n  \n", " ", " b"));
  EXPECT_THAT(Split(kL3, "a\r\nb"), ElementsAre("a", "\r\n", "b"));
  EXPECT_THAT(Split(kL3, "a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Split(kL3, "x   "), ElementsAre("x", "   "));
  // Punctuation takes the newlines after it.
  EXPECT_THAT(Split(kL3, "!!!\n\n"), ElementsAre("!!!\n\n"));
  EXPECT_THAT(Split(kL3, " ?!\r\nx"), ElementsAre(" ?!\r\n", "x"));
  EXPECT_THAT(Split(kL3, "\u4F60\u597D \u4E16\u754C"),
              ElementsAre("\u4F60\u597D", " \u4E16\u754C"));
}

TEST(PreTokenizerTest, Qwen2SplitsEveryDigit) {
  EXPECT_THAT(Split("qwen2", "x1234 it's"),
              ElementsAre("x", "1", "2", "3", "4", " it", "'s"));
}

TEST(PreTokenizerTest, StarcoderSplitsDigitsFirst) {
  EXPECT_THAT(Split("starcoder", "abc 123"),
              ElementsAre("abc", " ", "1", "2", "3"));
  EXPECT_THAT(Split("refact", "x 42"), ElementsAre("x", " ", "4", "2"));
  EXPECT_THAT(Split("smollm", "v2.0"), ElementsAre("v", "2", ".", "0"));
}

TEST(PreTokenizerTest, Falcon) {
  EXPECT_THAT(Split("falcon", "Hello, world!"),
              ElementsAre("Hello", ",", " world", "!"));
  EXPECT_THAT(Split("falcon", "1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Split("falcon", " 12345"), ElementsAre(" ", "123", "45"));
  EXPECT_THAT(Split("falcon", "a+=b"), ElementsAre("a", "+=", "b"));
  EXPECT_THAT(Split("falcon", "x `y`"), ElementsAre("x", " ", "`", "y", "`"));
  // A currency sign is \p{S}, not in the first regex's class.
  EXPECT_THAT(Split("falcon", "\u20AC5"), ElementsAre("\u20AC", "5"));
}

TEST(PreTokenizerTest, Default) {
  // No backtick in the default's first class, unlike falcon's.
  EXPECT_THAT(Split("default", "a`b"), ElementsAre("a", "`", "b"));
  EXPECT_THAT(Split("default", "12345"), ElementsAre("123", "45"));
  EXPECT_THAT(Split("default", "x\u00BDy"), ElementsAre("x", "\u00BD", "y"));
  EXPECT_THAT(Split("default", "a.b,c"), ElementsAre("a", ".", "b", ",", "c"));
}

TEST(PreTokenizerTest, DeepseekCoder) {
  const std::string_view kDc = "deepseek-coder";
  EXPECT_THAT(Split(kDc, "Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Split(kDc, "  Hello"), ElementsAre(" ", " Hello"));
  EXPECT_THAT(Split(kDc, "a, b!"), ElementsAre("a", ",", " b", "!"));
  EXPECT_THAT(Split(kDc, "x=1"), ElementsAre("x", "=", "1"));
  EXPECT_THAT(Split(kDc, "\n ="), ElementsAre("\n", " ="));
  EXPECT_THAT(Split(kDc, "12"), ElementsAre("1", "2"));
  EXPECT_THAT(Split(kDc, "\t\n"), ElementsAre("\t", "\n"));
  EXPECT_THAT(Split(kDc, "\u6211\u60F3\u5728apple\u5DE5\u4F5C"),
              ElementsAre("\u6211\u60F3\u5728", "apple", "\u5DE5\u4F5C"));
  // U+3000 lies in the CJK range ࠀ-一 but is a space: never in the range.
  EXPECT_THAT(Split(kDc, "\u4E2D\u3000\u6587"),
              ElementsAre("\u4E2D", "\u3000", "\u6587"));
}

TEST(PreTokenizerTest, DeepseekLlm) {
  const std::string_view kDl = "deepseek-llm";
  EXPECT_THAT(Split(kDl, "Hello world!"), ElementsAre("Hello", " world", "!"));
  EXPECT_THAT(Split(kDl, "Hello   "), ElementsAre("Hello", "   "));
  EXPECT_THAT(Split(kDl, "ab  cd"), ElementsAre("ab", " ", " cd"));
  EXPECT_THAT(Split(kDl, "\u65E5\u672C\u8A9E"),
              ElementsAre("\u65E5\u672C\u8A9E"));
  EXPECT_THAT(Split(kDl, "x\u3002y"), ElementsAre("x", "\u3002", "y"));
  EXPECT_THAT(Split(kDl, "a\u3000b"), ElementsAre("a", "\u3000b"));
  EXPECT_THAT(Split(kDl, "!\u3000"), ElementsAre("!", "\u3000"));
  // Cased letters only: U+01C5 (Lt) is in, U+01BB (Lo) is not.
  EXPECT_THAT(Split(kDl, "\u00E9\u01C5"), ElementsAre("\u00E9\u01C5"));
  EXPECT_THAT(Split(kDl, "\u00E9\u01BB\u00E9"),
              ElementsAre("\u00E9", "\u01BB", "\u00E9"));
  // The third regex's :-~ spans the ASCII letters, so it cuts them out of
  // a word with other letters (HF's deepseek-llm splits so too).
  EXPECT_THAT(Split(kDl, "a\u00E9b"), ElementsAre("a", "\u00E9", "b"));
  // U+1FBE and U+212A must not have been NFC-normalized into the ranges.
  EXPECT_THAT(Split(kDl, "\u1FBE\u212A"), ElementsAre("\u1FBE\u212A"));
  EXPECT_THAT(Split(kDl, "x 123 "), ElementsAre("x", " ", "123", " "));
  EXPECT_THAT(Split(kDl, "a\nb"), ElementsAre("a", "\n", "b"));
}

TEST(PreTokenizerTest, AliasesShareTheirFamily) {
  EXPECT_EQ(Split("llama3", "it'S 12345"), Split("llama-bpe", "it'S 12345"));
  EXPECT_EQ(Split("mpt", "it'S 12345"), Split("gpt-2", "it'S 12345"));
  EXPECT_TRUE(PreTokenizer::ForName("llama-bpe")->ignore_merges());
  EXPECT_FALSE(PreTokenizer::ForName("dbrx")->ignore_merges());
  EXPECT_FALSE(PreTokenizer::ForName("gpt-2")->ignore_merges());
}

TEST(PreTokenizerTest, UnknownNameListsTheSupportedOnes) {
  const absl::StatusOr<PreTokenizer> pre = PreTokenizer::ForName("gpt-5");
  ASSERT_FALSE(pre.ok());
  EXPECT_EQ(pre.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pre.status().message(), HasSubstr("'gpt-5'"));
  for (const char* name :
       {"default", "gpt-2", "llama-bpe", "qwen2", "smollm", "starcoder",
        "refact", "falcon", "deepseek-llm", "deepseek-coder"}) {
    EXPECT_THAT(pre.status().message(), HasSubstr(name));
    EXPECT_TRUE(PreTokenizer::ForName(name).ok()) << name;
  }
}

TEST(PreTokenizerTest, InvalidUtf8IsSplitNotDropped) {
  const std::string text = "ab\xFF\xC3 cd\xE2\x82";
  std::string joined;
  for (const std::string& piece : Split("llama-bpe", text)) joined += piece;
  EXPECT_EQ(joined, text);
}

// --- An independent reference: the regexes on RE2. ---------------------------
//
// The same regex texts as llama.cpp's lists, with only what RE2 needs:
// \s spelled out as llama.cpp's whitespace set, \s+(?!\S) handled after the
// match (a final \s+ alternative, in group 2, gives back its last character
// when longer than one and followed by more text), and in regexes with
// literal ranges the non-ASCII spaces cut out of the ranges.

constexpr char kSpaces[] =
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}"
    "\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// Replaces "\s" with the space set: bare, or inside a bracket expression.
std::string WithSpaces(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      if (pattern[i + 1] == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", kSpaces,
                        in_class ? "" : "]");
      } else {
        out += pattern.substr(i, 2);
      }
      ++i;
      continue;
    }
    if (pattern[i] == '[') in_class = true;
    if (pattern[i] == ']') in_class = false;
    out += pattern[i];
  }
  return out;
}

struct RefRegex {
  std::string pattern;
  bool lookahead = false;  // group 2 is the \s+ that stands for \s+(?!\S)
};

constexpr char kGpt2Re[] =
    "('s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
    "?[^\\s\\p{L}\\p{N}]+)|(\\s+)";
std::string Llama3Re(const std::string& digits) {
  return absl::StrCat(
      "((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|"
      "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|",
      digits, "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+)|(\\s+)");
}
constexpr char kCjkRe[] =
    "[\\x{800}-\\x{167F}\\x{1681}-\\x{1FFF}\\x{200B}-\\x{2027}"
    "\\x{202A}-\\x{202E}\\x{2030}-\\x{205E}\\x{2060}-\\x{2FFF}"
    "\\x{3001}-\\x{9FA5}\\x{AC00}-\\x{D7FF}]+";
constexpr char kDeepseekLettersRe[] =
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}"
    "\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}"
    "\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"
    "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}"
    "\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}"
    "\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}"
    "\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}"
    "\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}"
    "\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
    "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}"
    "\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}"
    "\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}"
    "\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}"
    "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}"
    "\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}"
    "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}"
    "\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}"
    "\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"
    "\\x{1E900}-\\x{1E943}]+";

std::vector<RefRegex> ReferenceList(std::string_view name) {
  const RefRegex gpt2{kGpt2Re, true};
  if (name == "gpt-2") return {gpt2};
  if (name == "llama-bpe") return {{Llama3Re("\\p{N}{1,3}"), true}};
  if (name == "qwen2") return {{Llama3Re("\\p{N}"), true}};
  if (name == "starcoder") return {{"\\p{N}"}, gpt2};
  if (name == "falcon") {
    return {{"[\\p{P}\\$\\+<=>\\^~\\|`]+"}, gpt2, {"[0-9][0-9][0-9]"}};
  }
  if (name == "default") {
    return {
        {"[\\p{P}\\$\\+<=>\\^~\\|]+"}, gpt2, {"\\p{N}+"}, {"[0-9][0-9][0-9]"}};
  }
  if (name == "deepseek-coder") {
    return {
        {"[\\r\\n]"}, {"\\s?\\p{L}+"}, {"\\s?\\p{P}+"}, {kCjkRe}, {"\\p{N}"}};
  }
  if (name == "deepseek-llm") {
    return {{"[\\r\\n]"},
            {kDeepseekLettersRe},
            {"\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}"
             "\\x{2018}-\\x{201F}\\x{3001}-\\x{3002}]+"},
            {"\\s+$"},
            {kCjkRe},
            {"\\p{N}+"}};
  }
  ADD_FAILURE() << "no reference for " << name;
  return {};
}

// unicode_regex_split_stl for one regex: its matches in `piece` and the
// stretches between them.
void ReferenceSplit(const RE2& re, bool lookahead, std::string_view piece,
                    Pieces* out) {
  const re2::StringPiece text(piece.data(), piece.size());
  size_t pos = 0;
  size_t last = 0;
  re2::StringPiece groups[3];
  while (pos < piece.size() &&
         re.Match(text, pos, piece.size(), RE2::UNANCHORED, groups, 3)) {
    const size_t start = groups[0].data() - piece.data();
    size_t length = groups[0].size();
    if (lookahead && groups[2].data() != nullptr &&
        start + length < piece.size()) {
      // Give back the last character (not byte) if it is not the only one.
      size_t last_char = length - 1;
      while (last_char > 0 && (piece[start + last_char] & 0xC0) == 0x80) {
        --last_char;
      }
      if (last_char > 0) length = last_char;
    }
    if (length == 0) {  // none of these regexes can match empty
      ADD_FAILURE() << "empty match";
      break;
    }
    if (start > last) out->emplace_back(piece.substr(last, start - last));
    out->emplace_back(piece.substr(start, length));
    pos = last = start + length;
  }
  if (last < piece.size()) out->emplace_back(piece.substr(last));
}

class ReferenceSplitter {
 public:
  explicit ReferenceSplitter(std::string_view name) {
    for (const RefRegex& r : ReferenceList(name)) {
      auto re = std::make_unique<RE2>(WithSpaces(r.pattern));
      EXPECT_TRUE(re->ok()) << r.pattern << ": " << re->error();
      regexes_.push_back({std::move(re), r.lookahead});
    }
  }

  Pieces Split(std::string_view text) const {
    Pieces pieces;
    if (!text.empty()) pieces.emplace_back(text);
    for (const auto& [re, lookahead] : regexes_) {
      Pieces next;
      for (const std::string& piece : pieces) {
        ReferenceSplit(*re, lookahead, piece, &next);
      }
      pieces.swap(next);
    }
    return pieces;
  }

 private:
  std::vector<std::pair<std::unique_ptr<RE2>, bool>> regexes_;
};

// Characters whose categories RE2 and unicode_data.cc agree on (checked
// below), chosen to hit every branch: ASCII and other letters, a titlecase
// and an "other" letter, all kinds of numbers, ASCII and Unicode spaces,
// apostrophes and contraction letters, P and S in and out of ASCII, the
// deepseek ranges, a joiner, a combining mark, emoji, controls.
const std::vector<std::string>& Alphabet() {
  // clang-format off
  static const auto* alphabet = new std::vector<std::string>{
      "a", "b", "s", "t", "r", "e", "v", "m", "l", "d", "S", "T", "R", "E",
      "V", "M", "L", "D", "Z", "\u00E9", "\u00DF", "\u01C5", "\u01BB",
      "\u0416", "\u4E2D", "\u65E5", "\uAC00", "\uFF76", "\u1FBE", "0", "7",
      "\u00B2", "\u00BD", "\u0663", "\u216B", " ", " ", " ", "\t", "\n",
      "\n", "\r", "\v", "\f", "\u00A0", "\u3000", "\u2003", "\u0085", "'",
      "'", "!", ".", ",", "$", "+", "<", "=", "~", "|", "`", "^", "(", ")",
      "-", "_", "\u20AC", "\u00A9", "\U0001F600", "\U0001F999", "\u200D",
      "\u0301", "\uFF01", "\uFF5E", "\u2018", "\u3001", "\u3002",
      std::string(1, '\x01'), "\x7F", "\uFFFD"};
  // clang-format on
  return *alphabet;
}

TEST(PreTokenizerReferenceTest, AlphabetCategoriesAgreeWithRe2) {
  const RE2 letter("\\p{L}"), number("\\p{N}"), punct("\\p{P}");
  for (const std::string& c : Alphabet()) {
    uint32_t cp = 0;
    DecodeUtf8Char(c, &cp);
    const CodepointProps props = GetCodepointProps(cp);
    EXPECT_EQ(RE2::FullMatch(c, letter), props.is_letter()) << c;
    EXPECT_EQ(RE2::FullMatch(c, number), props.is_number()) << c;
    EXPECT_EQ(RE2::FullMatch(c, punct), props.is_punctuation()) << c;
  }
}

TEST(PreTokenizerReferenceTest, HandCasesMatchRe2) {
  for (const char* name : {"gpt-2", "llama-bpe", "qwen2", "deepseek-llm"}) {
    const ReferenceSplitter reference(name);
    for (const char* text :
         {"Hello  world", "a \n\n  \n  b", "I'M 1234567 (x)", " ?!\r\nx",
          "\u4E2D\u3000\u6587 \u3002!\u3000", "x 123 ", "   "}) {
      EXPECT_EQ(Split(name, text), reference.Split(text))
          << name << ": " << text;
    }
  }
}

class PreTokenizerFuzzTest : public ::testing::TestWithParam<const char*> {};

TEST_P(PreTokenizerFuzzTest, MatchesRe2OnRandomText) {
  const ReferenceSplitter reference(GetParam());
  std::mt19937 rng(1234);
  const std::vector<std::string>& alphabet = Alphabet();
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::uniform_int_distribution<int> length(0, 24);
  int failures = 0;
  for (int i = 0; i < 3000 && failures < 5; ++i) {
    std::string text;
    for (int n = length(rng); n > 0; --n) text += alphabet[pick(rng)];
    const Pieces expected = reference.Split(text);
    const Pieces actual = Split(GetParam(), text);
    if (actual != expected) {
      ++failures;
      ADD_FAILURE() << "text: \"" << absl::CEscape(text)
                    << "\"\n  expected: " << ::testing::PrintToString(expected)
                    << "\n  actual:   " << ::testing::PrintToString(actual);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Names, PreTokenizerFuzzTest,
                         ::testing::Values("gpt-2", "llama-bpe", "qwen2",
                                           "starcoder", "falcon", "default",
                                           "deepseek-coder", "deepseek-llm"));

TEST(PreTokenizerTest, LongInputsAreLinear) {
  // Runs that a careless matcher rescans: 200k spaces before a word, 200k
  // digits, 200k letters. Each must take well under a second.
  const std::string spaces = std::string(200000, ' ') + "x";
  const std::string digits(200000, '7');
  const std::string letters(200000, 'q');
  for (const char* name : {"gpt-2", "llama-bpe", "falcon", "deepseek-llm"}) {
    EXPECT_EQ(Split(name, spaces).size(), 2u) << name;
    EXPECT_FALSE(Split(name, digits).empty());
    EXPECT_EQ(Split(name, letters).size(), 1u) << name;
  }
}

}  // namespace
}  // namespace sinkserve::engine
