// Model fingerprints: a short string that identifies the model a session's
// K/V rows were computed with, so that a snapshot is never restored under
// another model (memory::SessionState::model_fingerprint).
//
// The fingerprint hashes what defines the computation, read from the GGUF
// header alone: every metadata key and value (architecture, shapes, RoPE,
// tokenizer arrays, general.name, ...) and the tensor table (names, types,
// shapes). It never touches tensor data, so fingerprinting a multi-GB model
// takes milliseconds even with the file not yet in the page cache. The price:
// two files that differ only in their weights (a fine-tune re-exported with
// the same metadata) share a fingerprint; GGUF converters normally record
// the model's name and source in general.*, which tells them apart.
//
// Stable: the same file gives the same fingerprint in every process, build
// and machine (a fixed, hand-written hash over a canonical little-endian
// encoding; no std::hash, no pointer values, no padding bytes).
#ifndef SINKSERVE_ENGINE_GGUF_MODEL_FINGERPRINT_H_
#define SINKSERVE_ENGINE_GGUF_MODEL_FINGERPRINT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/gguf/gguf.h"

namespace sinkserve::engine {

// A 128-bit non-cryptographic hash: two independent 64-bit lanes (different
// seeds, multipliers and rotations) over 8-byte words, each finished with
// MurmurHash3's fmix64. Collisions between distinct models are ~2^-64 likely
// per pair; it does not resist deliberate forgery (nor need it: whoever can
// write the store can write any state).
class Hash128 {
 public:
  Hash128();
  void Update(std::string_view bytes);
  void UpdateU64(uint64_t v);
  // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
  void UpdateString(std::string_view s);
  // 32 lowercase hex digits. Does not change the state.
  std::string HexDigest() const;

 private:
  void Word(uint64_t w);

  uint64_t a_;
  uint64_t b_;
  uint64_t length_ = 0;
  uint64_t tail_ = 0;   // bytes not yet forming a whole word, little-endian
  int tail_bytes_ = 0;
};

// "<architecture>-<32 hex digits>", e.g. "llama-3f0c...". The prefix is for
// people reading errors; the digits alone decide equality.
std::string ModelFingerprint(const GgufFile& file);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_MODEL_FINGERPRINT_H_
