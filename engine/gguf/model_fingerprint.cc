#include "engine/gguf/model_fingerprint.h"

#include <algorithm>
#include <cstring>
#include <variant>

#include "absl/strings/str_cat.h"

namespace sinkserve::engine {
namespace {

// Odd 64-bit constants (the first from SplitMix64/golden ratio, the others
// from xxHash64 and MurmurHash3): each lane uses its own pair.
constexpr uint64_t kSeedA = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kSeedB = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kMulA1 = 0x87C37B91114253D5ull;
constexpr uint64_t kMulA2 = 0x4CF5AD432745937Full;
constexpr uint64_t kMulB1 = 0x9FB21C651E98DF25ull;
constexpr uint64_t kMulB2 = 0x165667B19E3779F9ull;

uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t Fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDull;
  k ^= k >> 33;
  k *= 0xC4CEB9FE1A85EC53ull;
  k ^= k >> 33;
  return k;
}

uint64_t DoubleBits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof(u));
  return u;
}

void HashValue(const GgufValue& v, Hash128* h) {
  h->UpdateU64(static_cast<uint64_t>(v.type));
  // The variant's alternative follows from the type; hash its index too so a
  // value can never alias one of another kind.
  h->UpdateU64(v.value.index());
  if (const auto* u = std::get_if<uint64_t>(&v.value)) {
    h->UpdateU64(*u);
  } else if (const auto* i = std::get_if<int64_t>(&v.value)) {
    h->UpdateU64(static_cast<uint64_t>(*i));
  } else if (const auto* d = std::get_if<double>(&v.value)) {
    h->UpdateU64(DoubleBits(*d));
  } else if (const auto* b = std::get_if<bool>(&v.value)) {
    h->UpdateU64(*b ? 1 : 0);
  } else if (const auto* s = std::get_if<std::string_view>(&v.value)) {
    h->UpdateString(*s);
  } else if (const GgufArray* a = v.AsArray()) {
    h->UpdateU64(static_cast<uint64_t>(a->element_type));
    h->UpdateU64(a->elements.size());
    for (const GgufValue& e : a->elements) HashValue(e, h);
  }
}

}  // namespace

Hash128::Hash128() : a_(kSeedA), b_(kSeedB) {}

void Hash128::Word(uint64_t w) {
  a_ = Rotl(a_ ^ (w * kMulA1), 31) * kMulA2;
  b_ = Rotl(b_ ^ (w * kMulB1), 27) * kMulB2 + 0x52DCE729;
}

void Hash128::Update(std::string_view bytes) {
  for (unsigned char c : bytes) {
    tail_ |= uint64_t{c} << (8 * tail_bytes_);
    if (++tail_bytes_ == 8) {
      Word(tail_);
      tail_ = 0;
      tail_bytes_ = 0;
    }
  }
  length_ += bytes.size();
}

void Hash128::UpdateU64(uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  Update(std::string_view(b, 8));
}

void Hash128::UpdateString(std::string_view s) {
  UpdateU64(s.size());
  Update(s);
}

std::string Hash128::HexDigest() const {
  uint64_t a = a_;
  uint64_t b = b_;
  // The partial word and the length, folded into both lanes.
  a = Rotl(a ^ (tail_ * kMulA1), 31) * kMulA2;
  b = Rotl(b ^ (tail_ * kMulB1), 27) * kMulB2;
  a ^= length_;
  b ^= Rotl(length_, 32);
  a += b;
  b += a;
  a = Fmix64(a);
  b = Fmix64(b);
  a += b;
  b += a;
  return absl::StrCat(absl::Hex(a, absl::kZeroPad16), absl::Hex(b, absl::kZeroPad16));
}

std::string ModelFingerprint(const GgufFile& file) {
  Hash128 h;
  h.UpdateString("sinkserve model fingerprint v1");
  h.UpdateU64(file.metadata().size());
  for (const GgufKv& kv : file.metadata()) {
    h.UpdateString(kv.key);
    HashValue(kv.value, &h);
  }
  h.UpdateU64(file.tensors().size());
  for (const GgufTensorInfo& t : file.tensors()) {
    h.UpdateString(t.name);
    h.UpdateU64(static_cast<uint64_t>(t.type->type));
    h.UpdateU64(t.shape.size());
    for (int64_t d : t.shape) h.UpdateU64(static_cast<uint64_t>(d));
    h.UpdateU64(t.size_bytes);
  }
  std::string arch = "model";
  if (const GgufValue* v = file.Find("general.architecture")) {
    absl::StatusOr<std::string_view> s = v->AsString();
    // Printable ASCII only: it ends up in error messages and listings.
    if (s.ok() && !s->empty() && s->size() <= 32 &&
        std::all_of(s->begin(), s->end(), [](char c) { return c > 0x20 && c < 0x7F; })) {
      arch = std::string(*s);
    }
  }
  return absl::StrCat(arch, "-", h.HexDigest());
}

}  // namespace sinkserve::engine
