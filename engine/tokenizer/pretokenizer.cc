#include "engine/tokenizer/pretokenizer.h"

#include <algorithm>
#include <iterator>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode_data.h"
#include "engine/tokenizer/utf8.h"

namespace sinkserve::engine {
namespace {

using Rule = PreTokenizer::Rule;

struct CodepointRange {
  uint32_t first;
  uint32_t last;
};

// deepseek-llm's letter class: the cased letters (Lu, Ll, Lt) of some
// Unicode version, as ranges. Some of its characters (U+1FBE, U+2126,
// U+212A, ...) have singleton NFC decompositions, so the regex text must
// never be NFC-normalized; written as numbers here for that reason.
constexpr CodepointRange kDeepseekLetters[] = {
    {0x00041, 0x0005A}, {0x00061, 0x0007A}, {0x000B5, 0x000B5},
    {0x000C0, 0x000D6}, {0x000D8, 0x000F6}, {0x000F8, 0x001BA},
    {0x001BC, 0x001BF}, {0x001C4, 0x00293}, {0x00295, 0x002AF},
    {0x00370, 0x00373}, {0x00376, 0x00377}, {0x0037B, 0x0037D},
    {0x0037F, 0x0037F}, {0x00386, 0x00386}, {0x00388, 0x0038A},
    {0x0038C, 0x0038C}, {0x0038E, 0x003A1}, {0x003A3, 0x003F5},
    {0x003F7, 0x00481}, {0x0048A, 0x0052F}, {0x00531, 0x00556},
    {0x010A0, 0x010C5}, {0x013A0, 0x013F5}, {0x013F8, 0x013FD},
    {0x01C90, 0x01CBA}, {0x01CBD, 0x01CBF}, {0x01D00, 0x01D2B},
    {0x01D6B, 0x01D77}, {0x01D79, 0x01D9A}, {0x01E00, 0x01F15},
    {0x01F18, 0x01F1D}, {0x01F20, 0x01F45}, {0x01F48, 0x01F4D},
    {0x01F50, 0x01F57}, {0x01F59, 0x01F59}, {0x01F5B, 0x01F5B},
    {0x01F5D, 0x01F5D}, {0x01F5F, 0x01F7D}, {0x01F80, 0x01FB4},
    {0x01FB6, 0x01FBC}, {0x01FBE, 0x01FBE}, {0x01FC2, 0x01FC4},
    {0x01FC6, 0x01FCC}, {0x01FD0, 0x01FD3}, {0x01FD6, 0x01FDB},
    {0x01FE0, 0x01FEC}, {0x01FF2, 0x01FF4}, {0x01FF6, 0x01FFC},
    {0x02102, 0x02102}, {0x02107, 0x02107}, {0x0210A, 0x02113},
    {0x02115, 0x02115}, {0x02119, 0x0211D}, {0x02124, 0x02124},
    {0x02126, 0x02126}, {0x02128, 0x02128}, {0x0212A, 0x0212D},
    {0x0212F, 0x02134}, {0x02139, 0x02139}, {0x0213C, 0x0213F},
    {0x02145, 0x02149}, {0x0214E, 0x0214E}, {0x02183, 0x02184},
    {0x02C00, 0x02C7B}, {0x02C7E, 0x02CE4}, {0x02CEB, 0x02CEE},
    {0x02CF2, 0x02CF3}, {0x0A640, 0x0A66D}, {0x0A680, 0x0A69B},
    {0x0A722, 0x0A76F}, {0x0A771, 0x0A787}, {0x0A78B, 0x0A78E},
    {0x0AB70, 0x0ABBF}, {0x0FB00, 0x0FB06}, {0x0FB13, 0x0FB17},
    {0x0FF21, 0x0FF3A}, {0x0FF41, 0x0FF5A}, {0x10400, 0x1044F},
    {0x104B0, 0x104D3}, {0x104D8, 0x104FB}, {0x10C80, 0x10CB2},
    {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

// [!-/:-~！-／：-～‘-‟　-。]
constexpr CodepointRange kDeepseekPunct[] = {
    {0x21, 0x2F},     {0x3A, 0x7E},     {0xFF01, 0xFF0F},
    {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};

// [一-龥ࠀ-一가-퟿]
constexpr CodepointRange kCjk[] = {
    {0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF}};

template <size_t N>
bool InRanges(uint32_t cp, const CodepointRange (&ranges)[N]) {
  return std::any_of(
      std::begin(ranges), std::end(ranges),
      [cp](const CodepointRange& r) { return cp >= r.first && cp <= r.last; });
}

// The text as code points; pieces are index ranges into it.
struct Codepoints {
  std::vector<uint32_t> cps;
  std::vector<CodepointProps> props;
  std::vector<size_t> offsets;  // byte offset of each code point, then size
};

Codepoints ToCodepoints(std::string_view text) {
  Codepoints t;
  t.cps.reserve(text.size());
  t.props.reserve(text.size());
  t.offsets.reserve(text.size() + 1);
  for (size_t offset = 0; offset < text.size();) {
    uint32_t cp = 0;
    const size_t n = DecodeUtf8Char(text.substr(offset), &cp);
    t.cps.push_back(cp);
    t.props.push_back(GetCodepointProps(cp));
    t.offsets.push_back(offset);
    offset += n;
  }
  t.offsets.push_back(text.size());
  return t;
}

// Runs one regex over one piece [begin, end), appending the end of each
// sub-piece to `ends`. Like llama.cpp, a regex sees only its piece: the
// lookahead (?!\S) and $ stop at the piece's end.
class PieceSplitter {
 public:
  PieceSplitter(const Codepoints& text, size_t begin, size_t end,
                std::vector<size_t>* ends)
      : t_(text), begin_(begin), end_(end), last_(begin), ends_(ends) {}

  void Run(Rule rule);

 private:
  using Pred = bool (PieceSplitter::*)(size_t) const;

  bool In(size_t i) const { return i < end_; }
  uint32_t Cp(size_t i) const { return In(i) ? t_.cps[i] : 0xFFFFFFFF; }
  bool IsSpace(size_t i) const { return In(i) && t_.props[i].is_whitespace(); }
  bool IsLetter(size_t i) const { return In(i) && t_.props[i].is_letter(); }
  bool IsNumber(size_t i) const { return In(i) && t_.props[i].is_number(); }
  bool IsPunct(size_t i) const { return In(i) && t_.props[i].is_punctuation(); }
  // \p{P} or one of the ASCII characters `extra`.
  bool IsPunctOr(size_t i, std::string_view extra) const {
    return IsPunct(i) ||
           (Cp(i) < 0x80 &&
            extra.find(static_cast<char>(Cp(i))) != std::string_view::npos);
  }
  // [^\s\p{L}\p{N}]
  bool IsOther(size_t i) const {
    return In(i) && !IsSpace(i) && !IsLetter(i) && !IsNumber(i);
  }
  bool IsNewline(size_t i) const { return Cp(i) == '\r' || Cp(i) == '\n'; }
  bool IsAsciiDigit(size_t i) const { return Cp(i) >= '0' && Cp(i) <= '9'; }
  // llama.cpp matches regexes with literal ranges on code points, after
  // turning every non-ASCII space into \v: such a space is \s but never in a
  // range, not even U+3000 in deepseek's 　-。.
  template <size_t N>
  bool InLiteral(size_t i, const CodepointRange (&ranges)[N]) const {
    return In(i) && !(Cp(i) >= 0x80 && IsSpace(i)) && InRanges(Cp(i), ranges);
  }

  size_t RunEnd(size_t i, Pred pred) const {
    while ((this->*pred)(i)) ++i;
    return i;
  }

  // Ends a sub-piece at `end` (nothing if it would be empty); returns `end`.
  size_t Cut(size_t end) {
    if (end > last_) {
      ends_->push_back(end);
      last_ = end;
    }
    return end;
  }

  // Length of 's|'t|'re|'ve|'m|'ll|'d at `i` (0 if none).
  size_t Contraction(size_t i, bool any_case) const;
  // End of the match of \s+(?!\S)|\s+ at `i`.
  size_t SpaceEnd(size_t i) const;

  void Gpt2();
  void Llama3(size_t max_digits);
  // Cuts the matches of a regex and the stretches between them. `match`
  // gives the length of the match starting at an index (0 for none).
  template <typename Match>
  void Matches(Match match);
  void TrailingSpace();

  const Codepoints& t_;
  const size_t begin_;
  const size_t end_;
  size_t last_;  // end of the last sub-piece cut
  std::vector<size_t>* ends_;
};

size_t PieceSplitter::Contraction(size_t i, bool any_case) const {
  if (Cp(i) != '\'') return 0;
  auto at = [&](size_t j) {
    const uint32_t c = Cp(j);
    return any_case && c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
  };
  const uint32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  const uint32_t c2 = at(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
      (c1 == 'l' && c2 == 'l')) {
    return 3;
  }
  return 0;
}

size_t PieceSplitter::SpaceEnd(size_t i) const {
  const size_t end = RunEnd(i, &PieceSplitter::IsSpace);
  // \s+ backtracks one character so that (?!\S) holds, which it can only
  // do when the run is longer than one.
  if (end - i > 1 && In(end)) return end - 1;
  return std::max(end, i + 1);
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (llama.cpp's list leaves out the last \s+, which changes nothing: what it
// would match is left between matches and becomes a piece anyway).
void PieceSplitter::Gpt2() {
  for (size_t pos = begin_; pos < end_;) {
    if (const size_t n = Contraction(pos, /*any_case=*/false)) {
      pos = Cut(pos + n);
      continue;
    }
    const size_t run = Cp(pos) == ' ' ? pos + 1 : pos;
    if (IsLetter(run)) {
      pos = Cut(RunEnd(run, &PieceSplitter::IsLetter));
    } else if (IsNumber(run)) {
      pos = Cut(RunEnd(run, &PieceSplitter::IsNumber));
    } else if (IsOther(run)) {
      pos = Cut(RunEnd(run, &PieceSplitter::IsOther));
    } else {
      pos = Cut(SpaceEnd(pos));
    }
  }
}

// (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|
// [^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
void PieceSplitter::Llama3(size_t max_digits) {
  for (size_t pos = begin_; pos < end_;) {
    if (const size_t n = Contraction(pos, /*any_case=*/true)) {
      pos = Cut(pos + n);
      continue;
    }
    if (IsLetter(pos) ||
        (!IsNewline(pos) && !IsNumber(pos) && IsLetter(pos + 1))) {
      pos = Cut(RunEnd(pos + 1, &PieceSplitter::IsLetter));
      continue;
    }
    if (IsNumber(pos)) {
      size_t end = pos;
      while (end - pos < max_digits && IsNumber(end)) ++end;
      pos = Cut(end);
      continue;
    }
    const size_t run = Cp(pos) == ' ' ? pos + 1 : pos;
    if (IsOther(run)) {
      const size_t end = RunEnd(run, &PieceSplitter::IsOther);
      pos = Cut(RunEnd(end, &PieceSplitter::IsNewline));
      continue;
    }
    // \s*[\r\n]+ backtracks to the last newline of the space run.
    size_t end = pos;
    size_t after_newline = 0;
    for (; IsSpace(end); ++end) {
      if (IsNewline(end)) after_newline = end + 1;
    }
    pos = Cut(after_newline > 0 ? after_newline : SpaceEnd(pos));
  }
}

template <typename Match>
void PieceSplitter::Matches(Match match) {
  for (size_t pos = begin_; pos < end_;) {
    const size_t n = match(pos);
    if (n == 0) {
      ++pos;
      continue;
    }
    Cut(pos);  // the unmatched stretch before the match, if any
    pos = Cut(pos + n);
  }
  Cut(end_);
}

// \s+$: the leftmost match is the whole space run at the end, if any.
void PieceSplitter::TrailingSpace() {
  size_t start = end_;
  while (start > begin_ && IsSpace(start - 1)) --start;
  Cut(start);
  Cut(end_);
}

void PieceSplitter::Run(Rule rule) {
  // C+ and \s?C+ for a character class C.
  auto run_of = [](auto in_class) {
    return [in_class](size_t i) {
      size_t end = i;
      while (in_class(end)) ++end;
      return end - i;
    };
  };
  auto space_then_run_of = [this, run_of](auto in_class) {
    return [this, run = run_of(in_class), in_class](size_t i) -> size_t {
      if (IsSpace(i) && in_class(i + 1)) return 1 + run(i + 1);
      return run(i);
    };
  };
  switch (rule) {
    case Rule::kGpt2:
      return Gpt2();
    case Rule::kLlama3:
      return Llama3(3);
    case Rule::kQwen2:
      return Llama3(1);
    case Rule::kPunctuationRun:
      return Matches(
          run_of([this](size_t i) { return IsPunctOr(i, "$+<=>^~|"); }));
    case Rule::kFalconPunctuation:
      return Matches(
          run_of([this](size_t i) { return IsPunctOr(i, "$+<=>^~|`"); }));
    case Rule::kNumberRun:
      return Matches(run_of([this](size_t i) { return IsNumber(i); }));
    case Rule::kEachNumber:
      return Matches([this](size_t i) -> size_t { return IsNumber(i); });
    case Rule::kDigitTriple:
      return Matches([this](size_t i) -> size_t {
        return IsAsciiDigit(i) && IsAsciiDigit(i + 1) && IsAsciiDigit(i + 2)
                   ? 3
                   : 0;
      });
    case Rule::kEachNewline:
      return Matches([this](size_t i) -> size_t { return IsNewline(i); });
    case Rule::kSpaceLetterRun:
      return Matches(
          space_then_run_of([this](size_t i) { return IsLetter(i); }));
    case Rule::kSpacePunctRun:
      return Matches(
          space_then_run_of([this](size_t i) { return IsPunct(i); }));
    case Rule::kCjkRun:
      return Matches(run_of([this](size_t i) { return InLiteral(i, kCjk); }));
    case Rule::kDeepseekLetterRun:
      return Matches(space_then_run_of(
          [this](size_t i) { return InLiteral(i, kDeepseekLetters); }));
    case Rule::kDeepseekPunctRun:
      return Matches(space_then_run_of(
          [this](size_t i) { return InLiteral(i, kDeepseekPunct); }));
    case Rule::kTrailingSpace:
      return TrailingSpace();
  }
}

// Which regex list a name stands for, as llama-vocab.cpp maps them.
enum class Family {
  kDefault,
  kGpt2,
  kLlama3,       // also ignore_merges
  kLlama3Regex,  // the Llama 3 regex with merges as usual
  kQwen2,
  kStarcoder,
  kFalcon,
  kDeepseekLlm,
  kDeepseekCoder,
};

struct NamedFamily {
  std::string_view name;
  Family family;
};

constexpr NamedFamily kNames[] = {
    {"default", Family::kDefault},
    {"gpt-2", Family::kGpt2},
    {"phi-2", Family::kGpt2},
    {"jina-es", Family::kGpt2},
    {"jina-de", Family::kGpt2},
    {"gigachat", Family::kGpt2},
    {"jina-v1-en", Family::kGpt2},
    {"jina-v2-es", Family::kGpt2},
    {"jina-v2-de", Family::kGpt2},
    {"jina-v2-code", Family::kGpt2},
    {"roberta-bpe", Family::kGpt2},
    {"a.x-4.0", Family::kGpt2},
    {"mellum", Family::kGpt2},
    {"modern-bert", Family::kGpt2},
    {"mpt", Family::kGpt2},
    {"olmo", Family::kGpt2},
    {"jais", Family::kGpt2},
    {"trillion", Family::kGpt2},
    {"granite-docling", Family::kGpt2},
    {"exaone4", Family::kGpt2},
    {"llama3", Family::kLlama3},
    {"llama-v3", Family::kLlama3},
    {"llama-bpe", Family::kLlama3},
    {"falcon3", Family::kLlama3},
    {"falcon-h1", Family::kLlama3},
    {"pixtral", Family::kLlama3},
    {"midm-2.0", Family::kLlama3},
    {"lfm2", Family::kLlama3},
    {"dbrx", Family::kLlama3Regex},
    {"smaug-bpe", Family::kLlama3Regex},
    {"glm4", Family::kLlama3Regex},
    {"chatglm-bpe", Family::kLlama3Regex},
    {"qwen2", Family::kQwen2},
    {"deepseek-r1-qwen", Family::kQwen2},
    {"megrez", Family::kQwen2},
    {"stablelm2", Family::kQwen2},
    {"hunyuan", Family::kQwen2},
    {"starcoder", Family::kStarcoder},
    {"refact", Family::kStarcoder},
    {"command-r", Family::kStarcoder},
    {"smollm", Family::kStarcoder},
    {"codeshell", Family::kStarcoder},
    {"exaone", Family::kStarcoder},
    {"minerva-7b", Family::kStarcoder},
    {"falcon", Family::kFalcon},
    {"deepseek-llm", Family::kDeepseekLlm},
    {"deepseek-coder", Family::kDeepseekCoder},
};

PreTokenizer ForFamily(Family family) {
  switch (family) {
    case Family::kDefault:
      return PreTokenizer({Rule::kPunctuationRun, Rule::kGpt2, Rule::kNumberRun,
                           Rule::kDigitTriple});
    case Family::kGpt2:
      return PreTokenizer({Rule::kGpt2});
    case Family::kLlama3:
      return PreTokenizer({Rule::kLlama3}, /*ignore_merges=*/true);
    case Family::kLlama3Regex:
      return PreTokenizer({Rule::kLlama3});
    case Family::kQwen2:
      return PreTokenizer({Rule::kQwen2});
    case Family::kStarcoder:
      return PreTokenizer({Rule::kEachNumber, Rule::kGpt2});
    case Family::kFalcon:
      return PreTokenizer(
          {Rule::kFalconPunctuation, Rule::kGpt2, Rule::kDigitTriple});
    case Family::kDeepseekLlm:
      return PreTokenizer({Rule::kEachNewline, Rule::kDeepseekLetterRun,
                           Rule::kDeepseekPunctRun, Rule::kTrailingSpace,
                           Rule::kCjkRun, Rule::kNumberRun});
    case Family::kDeepseekCoder:
      return PreTokenizer({Rule::kEachNewline, Rule::kSpaceLetterRun,
                           Rule::kSpacePunctRun, Rule::kCjkRun,
                           Rule::kEachNumber});
  }
  return PreTokenizer({});
}

}  // namespace

absl::StatusOr<PreTokenizer> PreTokenizer::ForName(std::string_view name) {
  for (const NamedFamily& named : kNames) {
    if (named.name == name) return ForFamily(named.family);
  }
  std::string supported;
  for (const std::string_view known : SupportedNames()) {
    if (!supported.empty()) supported += ", ";
    supported += known;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown pre-tokenizer '", std::string(name),
                   "' (tokenizer.ggml.pre); supported: ", supported));
}

std::vector<std::string_view> PreTokenizer::SupportedNames() {
  std::vector<std::string_view> names;
  for (const NamedFamily& named : kNames) names.push_back(named.name);
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string_view> PreTokenizer::Split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (text.empty()) return pieces;
  const Codepoints t = ToCodepoints(text);
  std::vector<size_t> ends = {t.cps.size()};
  std::vector<size_t> next;
  for (const Rule rule : rules_) {
    next.clear();
    size_t begin = 0;
    for (const size_t end : ends) {
      PieceSplitter(t, begin, end, &next).Run(rule);
      begin = end;
    }
    ends.swap(next);
  }
  pieces.reserve(ends.size());
  size_t begin = 0;
  for (const size_t end : ends) {
    pieces.push_back(
        text.substr(t.offsets[begin], t.offsets[end] - t.offsets[begin]));
    begin = end;
  }
  return pieces;
}

}  // namespace sinkserve::engine
