// libFuzzer target: the session snapshot decoders, which read whatever a
// store directory or an imported export file holds. Input byte 0 picks the
// record type; the rest is the payload, framed here with a correct CRC so
// the fuzzer gets past the checksum into the payload parsers. Whatever
// decodes is then validated and replayed onto a valid state, as
// SessionStore::Load does. Run with scripts/fuzz.
//
// With SINKSERVE_SNAPSHOT_SEEDS=DIR set, the first call writes valid records
// of every type there (what scripts/fuzz uses as the seed corpus).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>

#include "memory/session_state.h"
#include "memory/session_testing.h"
#include "memory/snapshot_format.h"

namespace {

using sinkserve::memory::ApplyDelta;
using sinkserve::memory::DiffMetadata;
using sinkserve::memory::SessionState;
using sinkserve::memory::StateReplayer;
using sinkserve::memory::store_testing::SimOptions;
using sinkserve::memory::store_testing::SimStateAt;
namespace snapshot = sinkserve::memory::snapshot;
using snapshot::RecordType;
using snapshot::SessionHeader;

constexpr int kRecordTypes = 6;  // kStoreMarker (1) .. kExportEnd (6)

// A session after its prompt (rows included) and after one more step.
const SessionState& Base() {
  static const SessionState* base = new SessionState(SimStateAt("fuzz", SimOptions(), 0));
  return *base;
}

void WriteSeed(const std::string& dir, const std::string& name, RecordType type,
               std::string_view value) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out.put(static_cast<char>(static_cast<uint8_t>(type) - 1));
  out << value.substr(snapshot::kFrameHeaderBytes);
}

void WriteSeeds(const std::string& dir) {
  const SessionState& base = Base();
  const SessionState next = SimStateAt("fuzz", SimOptions(), 3);
  WriteSeed(dir, "full", RecordType::kFullState, snapshot::EncodeFullState(base, 1, 1));
  if (auto delta = DiffMetadata(base, next); delta.ok()) {
    WriteSeed(dir, "delta", RecordType::kDelta, snapshot::EncodeDelta("fuzz", 2, *delta, 1));
  }
  SessionHeader header;
  header.info = sinkserve::memory::SessionInfo::Of(next);
  header.info.version = 2;
  header.info.deltas = 1;
  header.base_seq = 1;
  header.incarnation = 7;
  WriteSeed(dir, "header", RecordType::kSessionHeader, snapshot::EncodeSessionHeader(header));
  WriteSeed(dir, "marker", RecordType::kStoreMarker, snapshot::EncodeStoreMarker(1));
  WriteSeed(dir, "end", RecordType::kExportEnd, snapshot::EncodeExportEnd(3));
  const std::string rows = "0123456789abcdef";
  WriteSeed(dir, "chunk", RecordType::kKvChunk, snapshot::KvChunkPrefix(1, 1, rows) + rows);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("SINKSERVE_SNAPSHOT_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto type = static_cast<RecordType>(1 + data[0] % kRecordTypes);
  const std::string_view payload(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string value = snapshot::FrameHeader(type, {payload});
  value.append(payload);

  switch (type) {
    case RecordType::kStoreMarker:
      (void)snapshot::DecodeStoreMarker(value);
      break;
    case RecordType::kSessionHeader:
      (void)snapshot::DecodeSessionHeader(value);
      break;
    case RecordType::kFullState: {
      auto record = snapshot::DecodeFullState(value);
      if (record.ok() && record->state.ValidateMetadata().ok()) {
        StateReplayer replayer(std::move(record->state), /*with_kv=*/false);
        (void)std::move(replayer).Finish();
      }
      break;
    }
    case RecordType::kDelta: {
      auto record = snapshot::DecodeDelta(value);
      if (!record.ok()) break;
      // Rows of the size the delta claims (capped: the size check itself is
      // under test too), as the store reads them from the chunks.
      const int64_t row_bytes = record->delta.kv_cells() * Base().kv_shape.cell_bytes();
      StateReplayer replayer(Base().Copy(), /*with_kv=*/true);
      (void)replayer.Apply(record->delta, std::string(row_bytes > (1 << 20) ? 1 : row_bytes, 'r'));
      (void)std::move(replayer).Finish();
      SessionState state = Base().Copy();
      (void)ApplyDelta(record->delta, &state);
      break;
    }
    case RecordType::kKvChunk:
      (void)snapshot::DecodeKvChunk(value, 1, 1);
      break;
    case RecordType::kExportEnd:
      (void)snapshot::DecodeExportEnd(value);
      break;
  }
  // The raw bytes as a frame and as an export preamble: header parsing and
  // CRC checks on garbage.
  (void)snapshot::DecodeFrame(payload, type);
  (void)snapshot::CheckExportPreamble(payload);
  return 0;
}
