// UTF-8 helpers shared by the tokenizers and the detokenizer.
//
// "Valid" follows RFC 3629: no overlong forms, no surrogates (U+D800..DFFF),
// nothing above U+10FFFF. Invalid input is never guessed at: decoders give
// U+FFFD for each maximal invalid subpart, as the Unicode standard recommends
// (and as Python's errors="replace" does), and consume at least one byte.
#ifndef SINKSERVE_ENGINE_TOKENIZER_UTF8_H_
#define SINKSERVE_ENGINE_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sinkserve::engine {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of the sequence a lead byte announces (1..4), or 0 for a byte that
// cannot start a sequence (a continuation byte, 0xC0, 0xC1, 0xF5..0xFF).
int Utf8SequenceLength(uint8_t lead);

// Decodes one code point at the start of `text` (which must be non-empty).
// Returns the number of bytes consumed (>= 1) and sets `*cp`; on an invalid
// sequence sets `*cp` to kReplacementChar and consumes the maximal invalid
// subpart (at least one byte), so a loop always makes progress.
size_t DecodeUtf8Char(std::string_view text, uint32_t* cp);

// True if `text` is entirely well-formed UTF-8.
bool IsValidUtf8(std::string_view text);

// Byte offset of the first invalid sequence, or text.size() when valid.
size_t FirstInvalidUtf8(std::string_view text);

// How many bytes at the end of `text` are the start of a sequence that is
// still incomplete (0 when `text` ends on a character boundary or with bytes
// that can never become valid). Used by streaming decoders to hold bytes back.
size_t IncompleteUtf8Suffix(std::string_view text);

// Appends the UTF-8 encoding of `cp`; surrogates and values above U+10FFFF
// are encoded as U+FFFD.
void AppendUtf8(uint32_t cp, std::string* out);
std::string EncodeUtf8(uint32_t cp);

// All code points of `text`, with U+FFFD for invalid sequences.
std::vector<uint32_t> DecodeUtf8(std::string_view text);

// `text` with every invalid sequence replaced by U+FFFD.
std::string SanitizeUtf8(std::string_view text);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_TOKENIZER_UTF8_H_
