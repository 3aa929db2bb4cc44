#include "engine/tokenizer/utf8.h"

#include <algorithm>

namespace sinkserve::engine {
namespace {

bool IsContinuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// The second byte of a sequence has a narrower range than 80..BF for a few
// leads; that is what rules out overlong forms, surrogates and > U+10FFFF
// (Unicode Table 3-7).
bool ValidSecondByte(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return IsContinuation(b);
  }
}

// Number of bytes of `text` (starting with a lead of length `len`) that form
// a valid prefix of the sequence, up to `len`.
size_t ValidPrefix(std::string_view text, int len) {
  const uint8_t lead = static_cast<uint8_t>(text[0]);
  size_t n = 1;
  while (n < static_cast<size_t>(len) && n < text.size()) {
    const uint8_t b = static_cast<uint8_t>(text[n]);
    if (!(n == 1 ? ValidSecondByte(lead, b) : IsContinuation(b))) break;
    ++n;
  }
  return n;
}

}  // namespace

int Utf8SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xC2) return 0;  // continuation byte, or overlong C0/C1
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  if (lead < 0xF5) return 4;
  return 0;
}

size_t DecodeUtf8Char(std::string_view text, uint32_t* cp) {
  const uint8_t lead = static_cast<uint8_t>(text[0]);
  const int len = Utf8SequenceLength(lead);
  if (len == 1) {
    *cp = lead;
    return 1;
  }
  if (len == 0) {
    *cp = kReplacementChar;
    return 1;
  }
  const size_t n = ValidPrefix(text, len);
  if (n < static_cast<size_t>(len)) {
    *cp = kReplacementChar;
    return n;
  }
  static constexpr uint8_t kLeadMask[5] = {0, 0, 0x1F, 0x0F, 0x07};
  uint32_t value = lead & kLeadMask[len];
  for (int i = 1; i < len; ++i) {
    value = (value << 6) | (static_cast<uint8_t>(text[i]) & 0x3F);
  }
  *cp = value;
  return n;
}

size_t FirstInvalidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    // ASCII fast path: most text the server sees is ASCII.
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    uint32_t cp;
    const size_t n = DecodeUtf8Char(text.substr(i), &cp);
    if (cp == kReplacementChar) {
      // U+FFFD itself is valid; only a short or bad sequence is an error.
      const int len = Utf8SequenceLength(static_cast<uint8_t>(text[i]));
      if (len == 0 || n < static_cast<size_t>(len)) return i;
    }
    i += n;
  }
  return text.size();
}

bool IsValidUtf8(std::string_view text) {
  return FirstInvalidUtf8(text) == text.size();
}

size_t IncompleteUtf8Suffix(std::string_view text) {
  const size_t max_back = std::min<size_t>(3, text.size());
  for (size_t k = 1; k <= max_back; ++k) {
    const size_t start = text.size() - k;
    const uint8_t b = static_cast<uint8_t>(text[start]);
    if (IsContinuation(b)) continue;
    const int len = Utf8SequenceLength(b);
    // A lead whose sequence would need more bytes than remain, with every
    // byte so far valid, can still complete.
    if (len > static_cast<int>(k) &&
        ValidPrefix(text.substr(start), len) == k) {
      return k;
    }
    return 0;
  }
  return 0;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacementChar;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string EncodeUtf8(uint32_t cp) {
  std::string out;
  AppendUtf8(cp, &out);
  return out;
}

std::vector<uint32_t> DecodeUtf8(std::string_view text) {
  std::vector<uint32_t> out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    uint32_t cp;
    i += DecodeUtf8Char(text.substr(i), &cp);
    out.push_back(cp);
  }
  return out;
}

std::string SanitizeUtf8(std::string_view text) {
  const size_t first_bad = FirstInvalidUtf8(text);
  if (first_bad == text.size()) return std::string(text);
  std::string out(text.substr(0, first_bad));
  size_t i = first_bad;
  while (i < text.size()) {
    uint32_t cp;
    const size_t n = DecodeUtf8Char(text.substr(i), &cp);
    if (cp == kReplacementChar) {
      AppendUtf8(cp, &out);
    } else {
      out.append(text.substr(i, n));
    }
    i += n;
  }
  return out;
}

}  // namespace sinkserve::engine
