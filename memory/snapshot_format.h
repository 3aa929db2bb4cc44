// Encoding of session snapshots: the records a SessionStore keeps and the
// portable export file. memory/SNAPSHOT_FORMAT.md is the specification; this
// is its only implementation.
//
// Every record is a frame: a 16-byte header (CRC-32C, type, format version,
// payload length) and a little-endian payload. Decoders check the CRC first,
// then the version, then that the payload parses exactly; every failure is
// DATA_LOSS (FAILED_PRECONDITION for a version newer than this build), with a
// message naming what broke but not which session: callers add that.
#ifndef SINKSERVE_MEMORY_SNAPSHOT_FORMAT_H_
#define SINKSERVE_MEMORY_SNAPSHOT_FORMAT_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "memory/session_state.h"

namespace sinkserve::memory::snapshot {

// Bumped on any change to a payload's fields; readers refuse newer versions
// and read every older one. Writers always write kFormatVersion.
//   1: first version.
//   2: pending tokens in full-state and delta records.
//   3: the last completed turn (exactly-once retries) in full-state and
//      delta records.
//   4: pins (pinned system prompt and turns) in full-state and delta records,
//      the policy's max_pinned in full states.
inline constexpr uint8_t kFormatVersion = 4;
inline constexpr size_t kFrameHeaderBytes = 16;

enum class RecordType : uint8_t {
  kStoreMarker = 1,    // the store's own format version
  kSessionHeader = 2,  // per-session metadata and record chain
  kFullState = 3,      // a whole state but its K/V rows
  kDelta = 4,          // a SessionDelta but its K/V rows
  kKvChunk = 5,        // a slice of a full state's or delta's K/V rows
  kExportEnd = 6,      // last frame of an export file
};

std::string_view RecordTypeName(RecordType type);

// A frame's 16 header bytes for a payload made of `payload_parts`
// concatenated, so large payloads need not be copied to be checksummed.
std::string FrameHeader(RecordType type,
                        std::initializer_list<std::string_view> payload_parts);

struct FrameHeaderFields {
  RecordType type;
  uint8_t version;
  uint64_t payload_bytes;
  uint32_t crc;
};
// Parses a header without verifying the CRC (it covers the payload too): for
// readers that must learn the payload length first. DATA_LOSS if the type is
// unknown or `header` is shorter than kFrameHeaderBytes.
absl::StatusOr<FrameHeaderFields> ParseFrameHeader(std::string_view header);
// Checks the CRC of a parsed header and its payload, and the version.
absl::Status VerifyFrame(std::string_view header,
                         const FrameHeaderFields& fields,
                         std::string_view payload);

struct Frame {
  RecordType type;
  std::string_view payload;  // points into the decoded value
  uint8_t version = kFormatVersion;  // the version it was written with
};
// A whole frame, verified, that must be exactly `value` and of type `want`.
absl::StatusOr<Frame> DecodeFrame(std::string_view value, RecordType want);

// What every full-state and delta record says about itself.
struct RecordInfo {
  std::string id;
  // Position in the session's record chain (the key says it too).
  uint64_t seq = 0;
  // The K/V rows follow in kv_chunks chunk frames of kv_bytes in all.
  uint64_t kv_bytes = 0;
  uint32_t kv_chunks = 0;
};

// Chunks of at most `chunk_bytes` (> 0) for `kv_bytes`; 0 for no rows.
uint32_t KvChunkCount(uint64_t kv_bytes, uint64_t chunk_bytes);

// Full state record: `state` without its kv, whose kv.size() bytes follow in
// `kv_chunks` chunks.
std::string EncodeFullState(const SessionState& state, uint64_t seq,
                            uint32_t kv_chunks);
struct FullStateRecord {
  SessionState state;  // kv empty; not validated
  RecordInfo info;
};
absl::StatusOr<FullStateRecord> DecodeFullState(std::string_view value);

// Delta record: `delta` without its kv, whose kv.size() bytes follow in
// `kv_chunks` chunks.
std::string EncodeDelta(std::string_view id, uint64_t seq,
                        const SessionDelta& delta, uint32_t kv_chunks);
struct DeltaRecord {
  SessionDelta delta;  // kv empty; not validated
  RecordInfo info;
};
absl::StatusOr<DeltaRecord> DecodeDelta(std::string_view value);

// K/V chunk `index` (1-based) of record `seq`: the frame is
// KvChunkPrefix(...) followed by `data`, stored without copying it.
std::string KvChunkPrefix(uint64_t seq, uint32_t index, std::string_view data);
// The chunk's data, after checking it belongs to record `seq` at `index`.
absl::StatusOr<std::string_view> DecodeKvChunk(std::string_view value,
                                               uint64_t seq, uint32_t index);

// Per-session header: SessionInfo plus the record chain. The chain is the
// full state at base_seq followed by deltas base_seq+1 .. info.version.
struct SessionHeader {
  SessionInfo info;  // info.deltas == info.version - base_seq
  // Random, fixed when the session is first written; tells a session apart
  // from a later one of the same id (Delete then Put).
  uint64_t incarnation = 0;
  uint64_t base_seq = 0;
};
// The header of session `s` stored at `version`, its chain starting at the
// full state `base_seq`.
SessionHeader HeaderOf(const SessionState& s, uint64_t incarnation, uint64_t base_seq,
                       uint64_t version);
std::string EncodeSessionHeader(const SessionHeader& header);
absl::StatusOr<SessionHeader> DecodeSessionHeader(std::string_view value);

// The store-wide marker: the version of the store's layout.
std::string EncodeStoreMarker(uint32_t store_version);
absl::StatusOr<uint32_t> DecodeStoreMarker(std::string_view value);

// Export files start with these 16 bytes: magic, version, CRC of both.
inline constexpr std::string_view kExportMagic = "SINKSESS";
inline constexpr size_t kExportPreambleBytes = 16;
std::string EncodeExportPreamble();
absl::Status CheckExportPreamble(std::string_view preamble);
// ...and end with an ExportEnd frame counting the sessions before it.
std::string EncodeExportEnd(uint64_t sessions);
absl::StatusOr<uint64_t> DecodeExportEnd(std::string_view value);

// `status` with `context` ahead of its message; OK stays OK.
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace sinkserve::memory::snapshot

#endif  // SINKSERVE_MEMORY_SNAPSHOT_FORMAT_H_
