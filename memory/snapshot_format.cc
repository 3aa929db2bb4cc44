#include "memory/snapshot_format.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/crc32c.h"
#include "memory/snapshot_codec.h"
#include "memory/status_macros.h"

namespace sinkserve::memory::snapshot {
// The codec's writers and Reader, in every record below.
using namespace codec;  // NOLINT(build/namespaces)

std::string_view RecordTypeName(RecordType type) {
  switch (type) {
    case RecordType::kStoreMarker:
      return "store marker";
    case RecordType::kSessionHeader:
      return "session header";
    case RecordType::kFullState:
      return "full state";
    case RecordType::kDelta:
      return "delta";
    case RecordType::kKvChunk:
      return "kv chunk";
    case RecordType::kExportEnd:
      return "export end";
  }
  return "unknown";
}

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(Sv(context), ": ", status.message()));
}

std::string FrameHeader(RecordType type,
                        std::initializer_list<std::string_view> payload_parts) {
  uint64_t n = 0;
  for (std::string_view part : payload_parts) n += part.size();
  std::string h(4, '\0');
  PutU8(&h, static_cast<uint8_t>(type));
  PutU8(&h, kFormatVersion);
  h.append(2, '\0');  // reserved
  PutU64(&h, n);
  uint32_t crc = crc32c::Extend(0, std::string_view(h).substr(4));
  for (std::string_view part : payload_parts) crc = crc32c::Extend(crc, part);
  std::string crc_bytes;
  PutU32(&crc_bytes, crc);
  h.replace(0, 4, crc_bytes);
  return h;
}

absl::StatusOr<FrameHeaderFields> ParseFrameHeader(std::string_view header) {
  if (header.size() < kFrameHeaderBytes) {
    return absl::DataLossError(absl::StrCat("truncated frame: ", header.size(),
                                            " of ", kFrameHeaderBytes,
                                            " header bytes"));
  }
  FrameHeaderFields f;
  f.crc = LoadU32(header.data());
  const uint8_t type = static_cast<uint8_t>(header[4]);
  if (type < static_cast<uint8_t>(RecordType::kStoreMarker) ||
      type > static_cast<uint8_t>(RecordType::kExportEnd)) {
    return absl::DataLossError(
        absl::StrCat("frame of unknown record type ", type));
  }
  f.type = static_cast<RecordType>(type);
  f.version = static_cast<uint8_t>(header[5]);
  f.payload_bytes = LoadU64(header.data() + 8);
  return f;
}

absl::Status VerifyFrame(std::string_view header,
                         const FrameHeaderFields& fields,
                         std::string_view payload) {
  uint32_t crc = crc32c::Extend(0, header.substr(4, kFrameHeaderBytes - 4));
  crc = crc32c::Extend(crc, payload);
  if (crc != fields.crc) {
    return absl::DataLossError(absl::StrCat(
        Sv(RecordTypeName(fields.type)), " frame of ", payload.size(),
        " bytes: checksum mismatch (stored ", absl::Hex(fields.crc),
        ", computed ", absl::Hex(crc), ")"));
  }
  if (fields.version > kFormatVersion || fields.version == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        Sv(RecordTypeName(fields.type)), " record has format version ",
        fields.version, "; this build reads versions 1 to ", kFormatVersion));
  }
  return absl::OkStatus();
}

absl::StatusOr<Frame> DecodeFrame(std::string_view value, RecordType want) {
  SINKSERVE_ASSIGN_OR_RETURN(FrameHeaderFields f, ParseFrameHeader(value));
  const uint64_t have = value.size() - kFrameHeaderBytes;
  if (f.payload_bytes != have) {
    // A bad length is as likely as a cut: the CRC decides which it was not.
    return absl::DataLossError(absl::StrCat(
        Sv(RecordTypeName(f.type)), " frame says ", f.payload_bytes,
        " payload bytes but holds ", have, " (truncated or corrupt)"));
  }
  const std::string_view payload = value.substr(kFrameHeaderBytes);
  SINKSERVE_RETURN_IF_ERROR(VerifyFrame(value, f, payload));
  if (f.type != want) {
    return absl::DataLossError(absl::StrCat(
        "expected a ", Sv(RecordTypeName(want)), " record, found a ",
        Sv(RecordTypeName(f.type)), " record"));
  }
  return Frame{f.type, payload, f.version};
}

uint32_t KvChunkCount(uint64_t kv_bytes, uint64_t chunk_bytes) {
  return static_cast<uint32_t>((kv_bytes + chunk_bytes - 1) / chunk_bytes);
}

std::string EncodeFullState(const SessionState& s, uint64_t seq,
                            uint32_t kv_chunks) {
  std::string p;
  p.reserve(256 + s.cache.cells.size() * kCellBytes + s.sampler_config.size() +
            s.rng_state.size());
  PutBytes(&p, s.id);
  PutU64(&p, seq);
  PutBytes(&p, s.model_fingerprint);
  PutPolicy(&p, s.policy);
  PutI32(&p, s.capacity);
  PutShape(&p, s.kv_shape);
  PutI64(&p, s.cache.tokens_seen);
  PutI64(&p, s.cache.evicted_total);
  PutI64(&p, s.rounds);
  PutI64(&p, s.turns);
  PutI64(&p, s.history_length);
  PutTime(&p, s.created_at);
  PutTime(&p, s.updated_at);
  PutBytes(&p, s.sampler_config);
  PutBytes(&p, s.rng_state);
  PutPending(&p, s.pending);
  PutLastTurn(&p, s.last_turn);
  PutPins(&p, s.cache.pins);
  PutCells(&p, s.cache.cells);
  PutU64(&p, s.kv.size());
  PutU32(&p, kv_chunks);
  return Framed(RecordType::kFullState, p);
}

absl::StatusOr<FullStateRecord> DecodeFullState(std::string_view value) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kFullState));
  Reader r(frame.payload);
  FullStateRecord rec;
  SessionState& s = rec.state;
  s.id = r.Bytes("id");
  rec.info.seq = r.U64("seq");
  s.model_fingerprint = r.Bytes("model fingerprint");
  s.policy = r.Policy(frame.version);
  s.capacity = r.I32("capacity");
  s.kv_shape = r.Shape();
  s.cache.tokens_seen = r.I64("tokens seen");
  s.cache.evicted_total = r.I64("evicted total");
  s.rounds = r.I64("rounds");
  s.turns = r.I64("turns");
  s.history_length = r.I64("history length");
  s.created_at = r.Time("created at");
  s.updated_at = r.Time("updated at");
  s.sampler_config = r.Bytes("sampler config");
  s.rng_state = r.Bytes("rng state");
  if (frame.version >= 2) s.pending = r.Pending("pending tokens");
  if (frame.version >= 3) s.last_turn = r.LastTurn();
  if (frame.version >= 4) s.cache.pins = r.Pins();
  s.cache.cells = r.Cells("cells");
  rec.info.kv_bytes = r.U64("kv bytes");
  rec.info.kv_chunks = r.U32("kv chunks");
  SINKSERVE_RETURN_IF_ERROR(r.Finish(RecordType::kFullState));
  // Pinned flags are not stored: they follow from the pins.
  MarkPinned(&s.cache);
  rec.info.id = s.id;
  return rec;
}

std::string EncodeDelta(std::string_view id, uint64_t seq,
                        const SessionDelta& d, uint32_t kv_chunks) {
  std::string p;
  p.reserve(128 + id.size() + d.evicted.size() * 8 +
            (d.updated.size() + d.rewritten.size() + d.added.size()) *
                kCellBytes);
  PutBytes(&p, id);
  PutU64(&p, seq);
  PutI64(&p, d.tokens_seen);
  PutI64(&p, d.evicted_total);
  PutI64(&p, d.rounds);
  PutI64(&p, d.turns);
  PutI64(&p, d.history_length);
  PutTime(&p, d.updated_at);
  const uint8_t flags = (d.sampler_config ? kHasSampler : 0) |
                        (d.rng_state ? kHasRng : 0) |
                        (d.pending ? kHasPending : 0) |
                        (d.last_turn ? kHasLastTurn : 0) |
                        (d.pins ? kHasPins : 0);
  PutU8(&p, flags);
  if (d.sampler_config) PutBytes(&p, *d.sampler_config);
  if (d.rng_state) PutBytes(&p, *d.rng_state);
  if (d.pending) PutPending(&p, *d.pending);
  if (d.last_turn) PutLastTurn(&p, *d.last_turn);
  if (d.pins) PutPins(&p, *d.pins);
  PutU32(&p, static_cast<uint32_t>(d.evicted.size()));
  for (int64_t a : d.evicted) PutI64(&p, a);
  PutCells(&p, d.updated);
  PutCells(&p, d.rewritten);
  PutCells(&p, d.added);
  PutU64(&p, d.kv.size());
  PutU32(&p, kv_chunks);
  return Framed(RecordType::kDelta, p);
}

absl::StatusOr<DeltaRecord> DecodeDelta(std::string_view value) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kDelta));
  Reader r(frame.payload);
  DeltaRecord rec;
  SessionDelta& d = rec.delta;
  rec.info.id = r.Bytes("id");
  rec.info.seq = r.U64("seq");
  d.tokens_seen = r.I64("tokens seen");
  d.evicted_total = r.I64("evicted total");
  d.rounds = r.I64("rounds");
  d.turns = r.I64("turns");
  d.history_length = r.I64("history length");
  d.updated_at = r.Time("updated at");
  const uint8_t flags = r.U8("flags");
  if (flags & kHasSampler) d.sampler_config = r.Bytes("sampler config");
  if (flags & kHasRng) d.rng_state = r.Bytes("rng state");
  // Version 1 had no pending bit, versions 1 and 2 no last-turn bit,
  // versions 1 to 3 no pins bit: there they are unknown flags (below).
  const uint8_t known = kHasSampler | kHasRng |
                        (frame.version >= 2 ? kHasPending : 0) |
                        (frame.version >= 3 ? kHasLastTurn : 0) |
                        (frame.version >= 4 ? kHasPins : 0);
  if ((flags & known & kHasPending) != 0)
    d.pending = r.Pending("pending tokens");
  if ((flags & known & kHasLastTurn) != 0) d.last_turn = r.LastTurn();
  if ((flags & known & kHasPins) != 0) d.pins = r.Pins();
  d.evicted = r.Arrivals("evicted");
  d.updated = r.Cells("updated");
  d.rewritten = r.Cells("rewritten");
  d.added = r.Cells("added");
  rec.info.kv_bytes = r.U64("kv bytes");
  rec.info.kv_chunks = r.U32("kv chunks");
  SINKSERVE_RETURN_IF_ERROR(r.Finish(RecordType::kDelta));
  if ((flags & ~known) != 0) {
    return absl::DataLossError(
        absl::StrCat("delta record has unknown flags ", flags));
  }
  return rec;
}

std::string KvChunkPrefix(uint64_t seq, uint32_t index, std::string_view data) {
  std::string prefix;
  PutU64(&prefix, seq);
  PutU32(&prefix, index);
  std::string out = FrameHeader(RecordType::kKvChunk, {prefix, data});
  out += prefix;
  return out;
}

absl::StatusOr<std::string_view> DecodeKvChunk(std::string_view value,
                                               uint64_t seq, uint32_t index) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kKvChunk));
  if (frame.payload.size() < 12) {
    return absl::DataLossError(
        "kv chunk record shorter than its 12-byte prefix");
  }
  const uint64_t got_seq = LoadU64(frame.payload.data());
  const uint32_t got_index = LoadU32(frame.payload.data() + 8);
  if (got_seq != seq || got_index != index) {
    return absl::DataLossError(
        absl::StrCat("kv chunk says it is chunk ", got_index, " of record ",
                     got_seq, ", expected chunk ", index, " of record ", seq));
  }
  return frame.payload.substr(12);
}

SessionHeader HeaderOf(const SessionState& s, uint64_t incarnation, uint64_t base_seq,
                       uint64_t version) {
  SessionHeader h;
  h.info = SessionInfo::Of(s);
  h.info.version = version;
  h.info.deltas = static_cast<int64_t>(version - base_seq);
  h.incarnation = incarnation;
  h.base_seq = base_seq;
  return h;
}

std::string EncodeSessionHeader(const SessionHeader& h) {
  const SessionInfo& i = h.info;
  std::string p;
  PutBytes(&p, i.id);
  PutBytes(&p, i.model_fingerprint);
  PutBytes(&p, i.policy);
  PutI32(&p, i.capacity);
  PutShape(&p, i.kv_shape);
  PutI64(&p, i.cells);
  PutI64(&p, i.tokens_seen);
  PutI64(&p, i.rounds);
  PutI64(&p, i.turns);
  PutI64(&p, i.history_length);
  PutTime(&p, i.created_at);
  PutTime(&p, i.updated_at);
  PutU64(&p, h.incarnation);
  PutU64(&p, h.base_seq);
  PutU64(&p, i.version);
  return Framed(RecordType::kSessionHeader, p);
}

absl::StatusOr<SessionHeader> DecodeSessionHeader(std::string_view value) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kSessionHeader));
  Reader r(frame.payload);
  SessionHeader h;
  SessionInfo& i = h.info;
  i.id = r.Bytes("id");
  i.model_fingerprint = r.Bytes("model fingerprint");
  i.policy = r.Bytes("policy");
  i.capacity = r.I32("capacity");
  i.kv_shape = r.Shape();
  i.cells = r.I64("cells");
  i.tokens_seen = r.I64("tokens seen");
  i.rounds = r.I64("rounds");
  i.turns = r.I64("turns");
  i.history_length = r.I64("history length");
  i.created_at = r.Time("created at");
  i.updated_at = r.Time("updated at");
  h.incarnation = r.U64("incarnation");
  h.base_seq = r.U64("base seq");
  i.version = r.U64("last seq");
  SINKSERVE_RETURN_IF_ERROR(r.Finish(RecordType::kSessionHeader));
  if (i.version < h.base_seq) {
    return absl::DataLossError(absl::StrCat("session header: last record ",
                                            i.version, " before base record ",
                                            h.base_seq));
  }
  i.deltas = static_cast<int64_t>(i.version - h.base_seq);
  return h;
}

std::string EncodeStoreMarker(uint32_t store_version) {
  std::string p;
  PutU32(&p, store_version);
  return Framed(RecordType::kStoreMarker, p);
}

absl::StatusOr<uint32_t> DecodeStoreMarker(std::string_view value) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kStoreMarker));
  Reader r(frame.payload);
  const uint32_t version = r.U32("store version");
  SINKSERVE_RETURN_IF_ERROR(r.Finish(RecordType::kStoreMarker));
  return version;
}

std::string EncodeExportPreamble() {
  std::string p(kExportMagic);
  PutU32(&p, kFormatVersion);
  PutU32(&p, crc32c::Value(p));
  return p;
}

absl::Status CheckExportPreamble(std::string_view preamble) {
  if (preamble.size() < kExportPreambleBytes ||
      preamble.substr(0, kExportMagic.size()) != kExportMagic) {
    return absl::DataLossError(
        "not a sinkserve session export file (bad magic)");
  }
  if (LoadU32(preamble.data() + 12) != crc32c::Value(preamble.substr(0, 12))) {
    return absl::DataLossError("export file preamble: checksum mismatch");
  }
  const uint32_t version = LoadU32(preamble.data() + 8);
  if (version == 0 || version > kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("export file has format version ", version,
                     "; this build reads versions 1 to ", kFormatVersion));
  }
  return absl::OkStatus();
}

std::string EncodeExportEnd(uint64_t sessions) {
  std::string p;
  PutU64(&p, sessions);
  return Framed(RecordType::kExportEnd, p);
}

absl::StatusOr<uint64_t> DecodeExportEnd(std::string_view value) {
  SINKSERVE_ASSIGN_OR_RETURN(Frame frame,
                             DecodeFrame(value, RecordType::kExportEnd));
  Reader r(frame.payload);
  const uint64_t sessions = r.U64("sessions");
  SINKSERVE_RETURN_IF_ERROR(r.Finish(RecordType::kExportEnd));
  return sessions;
}

}  // namespace sinkserve::memory::snapshot
