// The byte-level codec of the snapshot format (SNAPSHOT_FORMAT.md):
// little-endian writers of its field types and a Reader that checks every
// length before it trusts it. Shared by snapshot_format.cc's records; not for
// use elsewhere.
#ifndef SINKSERVE_MEMORY_SNAPSHOT_CODEC_H_
#define SINKSERVE_MEMORY_SNAPSHOT_CODEC_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "memory/kv_cache.h"
#include "memory/session_state.h"
#include "memory/snapshot_format.h"

namespace sinkserve::memory::snapshot::codec {

inline absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// Bytes of one encoded Cell: token i32, score f32 bits, arrival i64, slot i32.
inline constexpr size_t kCellBytes = 20;
// Bit flags of a delta: which optional fields follow.
inline constexpr uint8_t kHasSampler = 1;
inline constexpr uint8_t kHasRng = 2;
inline constexpr uint8_t kHasPending = 4;    // version 2
inline constexpr uint8_t kHasLastTurn = 8;   // version 3
inline constexpr uint8_t kHasPins = 16;      // version 4
// Bytes of one encoded pending token: token i32, score f32 bits.
inline constexpr size_t kPendingBytes = 8;

inline void PutU8(std::string* out, uint8_t v) {
  out->push_back(static_cast<char>(v));
}

inline void PutU32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 4);
}

inline void PutU64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 8);
}

inline void PutI32(std::string* out, int32_t v) {
  PutU32(out, static_cast<uint32_t>(v));
}
inline void PutI64(std::string* out, int64_t v) {
  PutU64(out, static_cast<uint64_t>(v));
}

inline void PutF32(std::string* out, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  PutU32(out, bits);
}

inline void PutBytes(std::string* out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s.data(), s.size());
}

inline void PutTime(std::string* out, absl::Time t) {
  PutI64(out, absl::ToUnixNanos(t));
}

inline void PutCells(std::string* out, const std::vector<Cell>& cells) {
  PutU32(out, static_cast<uint32_t>(cells.size()));
  for (const Cell& c : cells) {
    PutI32(out, c.token);
    PutF32(out, c.score);
    PutI64(out, c.arrival);
    PutI32(out, c.slot);
  }
}

inline void PutPending(std::string* out, const std::vector<PendingToken>& pending) {
  PutU32(out, static_cast<uint32_t>(pending.size()));
  for (const PendingToken& p : pending) {
    PutI32(out, p.token);
    PutF32(out, p.score);
  }
}

inline void PutLastTurn(std::string* out, const CompletedTurn& t) {
  PutBytes(out, t.turn_id);
  PutBytes(out, t.text);
  PutU32(out, static_cast<uint32_t>(t.token_ids.size()));
  for (int32_t id : t.token_ids) PutI32(out, id);
  PutU32(out, static_cast<uint32_t>(t.logprobs.size()));
  for (float f : t.logprobs) PutF32(out, f);
  PutI32(out, t.stop_reason);
  PutI64(out, t.prompt_tokens);
  PutI64(out, t.generated_tokens);
  PutI64(out, t.cells_kept);
  PutI64(out, t.cells_evicted);
}

inline void PutPins(std::string* out, const std::vector<Pin>& pins) {
  PutU32(out, static_cast<uint32_t>(pins.size()));
  for (const Pin& p : pins) {
    PutBytes(out, p.label);
    PutI64(out, p.first);
    PutI64(out, p.end);
  }
}

inline void PutShape(std::string* out, const KvShape& s) {
  PutBytes(out, s.dtype);
  PutI32(out, s.dtype_bytes);
  PutI32(out, s.n_layers);
  PutI32(out, s.kv_dim);
}

inline void PutPolicy(std::string* out, const PolicyConfig& p) {
  // The kind by name, so reordering the enum cannot change stored data.
  PutBytes(out, PolicyKindName(p.kind));
  PutI32(out, p.sinks);
  PutI32(out, p.window);
  PutI32(out, p.entropy);
  PutF32(out, p.decay);
  PutI32(out, p.max_pinned);  // version 4
}

inline uint32_t LoadU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

inline uint64_t LoadU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i)
    v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

// Reads a payload front to back. The first failure sticks (later reads return
// zeros) and names the field, so decoders read everything and check once.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  uint8_t U8(const char* field) {
    const char* p = Take(1, field);
    return p ? static_cast<uint8_t>(*p) : 0;
  }
  uint32_t U32(const char* field) {
    const char* p = Take(4, field);
    return p ? LoadU32(p) : 0;
  }
  uint64_t U64(const char* field) {
    const char* p = Take(8, field);
    return p ? LoadU64(p) : 0;
  }
  int32_t I32(const char* field) { return static_cast<int32_t>(U32(field)); }
  int64_t I64(const char* field) { return static_cast<int64_t>(U64(field)); }
  float F32(const char* field) {
    const uint32_t bits = U32(field);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  absl::Time Time(const char* field) { return absl::FromUnixNanos(I64(field)); }
  std::string Bytes(const char* field) {
    const uint32_t n = U32(field);
    const char* p = Take(n, field);
    return p ? std::string(p, n) : std::string();
  }
  std::vector<Cell> Cells(const char* field) {
    const uint32_t n = U32(field);
    std::vector<Cell> cells;
    // Check the length before trusting it with an allocation.
    if (Take(size_t{n} * kCellBytes, field) == nullptr) return cells;
    pos_ -= size_t{n} * kCellBytes;
    cells.resize(n);
    for (Cell& c : cells) {
      c.token = I32(field);
      c.score = F32(field);
      c.arrival = I64(field);
      c.slot = I32(field);
    }
    return cells;
  }
  std::vector<PendingToken> Pending(const char* field) {
    const uint32_t n = U32(field);
    std::vector<PendingToken> v;
    if (Take(size_t{n} * kPendingBytes, field) == nullptr) return v;
    pos_ -= size_t{n} * kPendingBytes;
    v.resize(n);
    for (PendingToken& p : v) {
      p.token = I32(field);
      p.score = F32(field);
    }
    return v;
  }
  CompletedTurn LastTurn() {
    CompletedTurn t;
    t.turn_id = Bytes("last turn id");
    t.text = Bytes("last turn text");
    uint32_t n = U32("last turn token ids");
    if (Take(size_t{n} * 4, "last turn token ids") != nullptr) {
      pos_ -= size_t{n} * 4;
      t.token_ids.resize(n);
      for (int32_t& id : t.token_ids) id = I32("last turn token ids");
    }
    n = U32("last turn logprobs");
    if (Take(size_t{n} * 4, "last turn logprobs") != nullptr) {
      pos_ -= size_t{n} * 4;
      t.logprobs.resize(n);
      for (float& f : t.logprobs) f = F32("last turn logprobs");
    }
    t.stop_reason = I32("last turn stop reason");
    t.prompt_tokens = I64("last turn prompt tokens");
    t.generated_tokens = I64("last turn generated tokens");
    t.cells_kept = I64("last turn cells kept");
    t.cells_evicted = I64("last turn cells evicted");
    return t;
  }
  std::vector<int64_t> Arrivals(const char* field) {
    const uint32_t n = U32(field);
    std::vector<int64_t> v;
    if (Take(size_t{n} * 8, field) == nullptr) return v;
    pos_ -= size_t{n} * 8;
    v.resize(n);
    for (int64_t& a : v) a = I64(field);
    return v;
  }
  KvShape Shape() {
    KvShape s;
    s.dtype = Bytes("kv dtype");
    s.dtype_bytes = I32("kv dtype bytes");
    s.n_layers = I32("kv layers");
    s.kv_dim = I32("kv dim");
    return s;
  }
  std::vector<Pin> Pins() {
    const uint32_t n = U32("pins");
    std::vector<Pin> pins;
    // Each pin takes at least 20 bytes: never allocate past the payload.
    if (size_t{n} * 20 > data_.size() - pos_) {
      Take(size_t{n} * 20, "pins");
      return pins;
    }
    pins.resize(n);
    for (Pin& p : pins) {
      p.label = Bytes("pin label");
      p.first = I64("pin first");
      p.end = I64("pin end");
    }
    return pins;
  }
  PolicyConfig Policy(uint8_t version) {
    PolicyConfig p;
    const std::string kind = Bytes("policy kind");
    p.sinks = I32("policy sinks");
    p.window = I32("policy window");
    p.entropy = I32("policy entropy");
    p.decay = F32("policy decay");
    if (version >= 4) p.max_pinned = I32("policy max pinned");
    if (!error_.ok()) return p;
    absl::StatusOr<PolicyKind> parsed = ParsePolicyKind(kind);
    if (!parsed.ok()) {
      error_ =
          absl::DataLossError(absl::StrCat("unknown policy kind '", kind, "'"));
    } else {
      p.kind = *parsed;
    }
    return p;
  }

  // OK if every field was there and nothing is left over.
  absl::Status Finish(RecordType type) const {
    if (!error_.ok()) {
      return Annotate(error_,
                      absl::StrCat(Sv(RecordTypeName(type)), " record"));
    }
    if (pos_ != data_.size()) {
      return absl::DataLossError(absl::StrCat(
          Sv(RecordTypeName(type)), " record has ", data_.size() - pos_,
          " unexpected bytes after its last field"));
    }
    return absl::OkStatus();
  }

 private:
  const char* Take(size_t n, const char* field) {
    if (!error_.ok()) return nullptr;
    if (n > data_.size() - pos_) {
      error_ = absl::DataLossError(absl::StrCat(
          "truncated at field '", field, "': needs ", n, " bytes at offset ",
          pos_, ", ", data_.size() - pos_, " left"));
      return nullptr;
    }
    const char* p = data_.data() + pos_;
    pos_ += n;
    return p;
  }

  std::string_view data_;
  size_t pos_ = 0;
  absl::Status error_;
};

inline std::string Framed(RecordType type, const std::string& payload) {
  std::string out = FrameHeader(type, {payload});
  out += payload;
  return out;
}

}  // namespace sinkserve::memory::snapshot::codec

#endif  // SINKSERVE_MEMORY_SNAPSHOT_CODEC_H_
