// Unicode character properties the BPE pre-tokenizers need: the general
// category (as regex \p{L}, \p{N}, \p{P}, ... see it) and White_Space (\s).
//
// These are the same properties llama.cpp's unicode-data.cpp carries
// (unicode_cpt_flags), so pre-tokenization splits where llama.cpp splits.
// The table is Unicode 15.0 (from ICU 72); see unicode_data.cc.
#ifndef SINKSERVE_ENGINE_TOKENIZER_UNICODE_DATA_H_
#define SINKSERVE_ENGINE_TOKENIZER_UNICODE_DATA_H_

#include <cstdint>

namespace sinkserve::engine {

// General category, by its first letter. kUndefined is Cn (unassigned, and
// anything above U+10FFFF).
enum class UnicodeCategory : uint8_t {
  kUndefined = 0,
  kLetter,       // L*
  kMark,         // M*
  kNumber,       // N*
  kPunctuation,  // P*
  kSymbol,       // S*
  kSeparator,    // Z*
  kControl,      // C* other than Cn: Cc, Cf, Co, Cs
};

// Category in the low bits, White_Space in the top bit.
class CodepointProps {
 public:
  static constexpr uint8_t kWhitespaceBit = 0x80;

  constexpr CodepointProps() = default;
  explicit constexpr CodepointProps(uint8_t bits) : bits_(bits) {}

  UnicodeCategory category() const {
    return static_cast<UnicodeCategory>(bits_ & ~kWhitespaceBit);
  }
  bool is_whitespace() const { return (bits_ & kWhitespaceBit) != 0; }
  bool is_letter() const { return category() == UnicodeCategory::kLetter; }
  bool is_number() const { return category() == UnicodeCategory::kNumber; }
  bool is_punctuation() const {
    return category() == UnicodeCategory::kPunctuation;
  }
  uint8_t bits() const { return bits_; }

 private:
  uint8_t bits_ = 0;
};

// Properties of `cp`; any value is accepted (out of range is kUndefined).
// Constant time; the first call builds a ~50 KiB table (thread-safe).
CodepointProps GetCodepointProps(uint32_t cp);

// White_Space per PropList.txt: U+0009..000D, 0020, 0085, 00A0, 1680,
// 2000..200A, 2028, 2029, 202F, 205F, 3000.
bool IsUnicodeWhitespace(uint32_t cp);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_UNICODE_DATA_H_
