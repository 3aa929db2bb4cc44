#include "memory/snapshot_format.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/crc32c.h"
#include "memory/session_testing.h"

namespace sinkserve::memory::snapshot {
namespace {

using ::testing::HasSubstr;

// RFC 3720 (iSCSI) appendix B.4 test vectors, plus the classic check value.
TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(crc32c::Value("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c::Value(""), 0u);
  std::string zeros(32, '\0'), ones(32, '\xFF'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c::Value(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c::Value(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c::Value(up), 0x46DD794Eu);
  EXPECT_EQ(crc32c::Value(down), 0x113FDB5Cu);
  for (const std::string* s : {&zeros, &ones, &up, &down}) {
    EXPECT_EQ(crc32c::ExtendPortable(0, s->data(), s->size()),
              crc32c::Value(*s));
  }
}

TEST(Crc32cTest, PortableAndHardwareAgreeOnEveryLengthAndAlignment) {
  if (!crc32c::HasHardware()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937_64 rng(7);
  std::string buf(4096 + 16, '\0');
  for (char& c : buf) c = static_cast<char>(rng());
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n = 0; n < 300; ++n) {
      ASSERT_EQ(crc32c::ExtendPortable(0, buf.data() + offset, n),
                crc32c::ExtendHardware(0, buf.data() + offset, n))
          << "offset " << offset << " n " << n;
    }
  }
  EXPECT_EQ(crc32c::ExtendPortable(0, buf.data(), buf.size()),
            crc32c::ExtendHardware(0, buf.data(), buf.size()));
}

TEST(Crc32cTest, ExtendComposes) {
  const std::string a = "hello, ", b = "world";
  EXPECT_EQ(crc32c::Extend(crc32c::Value(a), b), crc32c::Value(a + b));
  EXPECT_EQ(crc32c::ExtendPortable(crc32c::Value(a), b.data(), b.size()),
            crc32c::Value(a + b));
}

SessionState Random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  return store_testing::RandomState(rng, "sess-" + std::to_string(seed));
}

TEST(SnapshotFormatTest, FullStateRoundTripsWithoutRows) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    SessionState s = Random(seed);
    const std::string value = EncodeFullState(s, 42 + seed, 3);
    absl::StatusOr<FullStateRecord> rec = DecodeFullState(value);
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->info.id, s.id);
    EXPECT_EQ(rec->info.seq, 42 + seed);
    EXPECT_EQ(rec->info.kv_bytes, s.kv.size());
    EXPECT_EQ(rec->info.kv_chunks, 3u);
    s.kv.clear();
    EXPECT_EQ(store_testing::Difference(rec->state, s), "");
  }
}

TEST(SnapshotFormatTest, DeltaRoundTrips) {
  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("d", o, 9);
  SessionState next = store_testing::SimStateAt("d", o, 10);
  absl::StatusOr<SessionDelta> delta = Diff(prev, next);
  ASSERT_TRUE(delta.ok()) << delta.status();
  ASSERT_TRUE(delta->sampler_config.has_value());  // step 10 changes it
  ASSERT_FALSE(delta->added.empty());
  ASSERT_FALSE(delta->evicted.empty());
  ASSERT_FALSE(delta->updated.empty());  // decay at the round boundary
  const std::string value = EncodeDelta("d", 11, *delta, 1);
  absl::StatusOr<DeltaRecord> rec = DecodeDelta(value);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->info.seq, 11u);
  EXPECT_EQ(rec->info.kv_bytes, delta->kv.size());
  SessionDelta want = delta->Copy();
  want.kv.clear();
  EXPECT_TRUE(rec->delta == want);
}

TEST(SnapshotFormatTest, EveryFlippedByteAndEveryTruncationIsDataLoss) {
  SessionState s = Random(3);
  const std::string value = EncodeFullState(s, 1, 0);
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] ^= 0x20;
    absl::StatusOr<FullStateRecord> rec = DecodeFullState(bad);
    ASSERT_FALSE(rec.ok()) << "flip at byte " << i;
    EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss) << i;
  }
  for (size_t n = 0; n < value.size(); ++n) {
    absl::StatusOr<FullStateRecord> rec = DecodeFullState(value.substr(0, n));
    ASSERT_EQ(rec.status().code(), absl::StatusCode::kDataLoss)
        << "length " << n;
  }
  absl::StatusOr<FullStateRecord> rec = DecodeFullState(value + "x");
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(
      std::string(DecodeFullState(value.substr(0, 40)).status().message()),
      HasSubstr("truncated"));
  std::string flipped = value;
  flipped[value.size() / 2] ^= 1;
  EXPECT_THAT(std::string(DecodeFullState(flipped).status().message()),
              HasSubstr("checksum mismatch"));
}

TEST(SnapshotFormatTest, WrongRecordTypeIsDataLoss) {
  const std::string header = EncodeStoreMarker(1);
  absl::StatusOr<FullStateRecord> rec = DecodeFullState(header);
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(rec.status().message()), HasSubstr("store marker"));
}

TEST(SnapshotFormatTest, NewerVersionIsFailedPrecondition) {
  std::string value = EncodeStoreMarker(1);
  value[5] = static_cast<char>(kFormatVersion + 1);
  // Re-seal the frame so only the version is wrong.
  const uint32_t crc = crc32c::Value(std::string_view(value).substr(4));
  for (int i = 0; i < 4; ++i) value[i] = static_cast<char>(crc >> (8 * i));
  absl::StatusOr<uint32_t> v = DecodeStoreMarker(value);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(v.status().message()),
              HasSubstr(absl::StrCat("format version ", kFormatVersion + 1)));
}

// A frame of `type` and `version` around `payload`, sealed with a valid CRC.
std::string Seal(RecordType type, uint8_t version, std::string_view payload) {
  std::string value = FrameHeader(type, {payload});
  value[5] = static_cast<char>(version);
  value += payload;
  const uint32_t crc = crc32c::Value(std::string_view(value).substr(4));
  for (int i = 0; i < 4; ++i) value[i] = static_cast<char>(crc >> (8 * i));
  return value;
}

TEST(SnapshotFormatTest, PendingTokensRoundTrip) {
  SessionState s = Random(7);
  s.pending = {
      {17, 3.25f}, {0, -0.0f}, {499, std::numeric_limits<float>::infinity()}};
  absl::StatusOr<FullStateRecord> rec =
      DecodeFullState(EncodeFullState(s, 1, 0));
  ASSERT_TRUE(rec.ok()) << rec.status();
  s.kv.clear();
  EXPECT_TRUE(rec->state == s);
  ASSERT_EQ(rec->state.pending.size(), 3u);
  EXPECT_TRUE(std::signbit(rec->state.pending[1].score));
}

// Bytes of an empty last turn (version 3): turn id, text, token id count,
// logprob count (u32 each), stop reason i32, four i64 usage counters.
constexpr size_t kEmptyLastTurnBytes = 4 * 4 + 4 + 4 * 8;

// The payload of `s` (no pins, max_pinned 0) as version 3 wrote it: version
// 4's empty pin count (just before the cells: u32 count, 20 bytes each, then
// the K/V size fields) and the policy's max pinned (after its decay) cut out.
std::string Version3FullStatePayload(const SessionState& s) {
  EXPECT_TRUE(s.cache.pins.empty());
  EXPECT_EQ(s.policy.max_pinned, 0);
  std::string payload = EncodeFullState(s, 5, 2).substr(kFrameHeaderBytes);
  const size_t pins_at = payload.size() - (8 + 4) - s.cache.cells.size() * 20 - 4 - 4;
  EXPECT_EQ(payload.substr(pins_at, 4), std::string(4, '\0'));
  payload.erase(pins_at, 4);
  const size_t pinned_at = 4 + s.id.size() + 8 + 4 + s.model_fingerprint.size() + 4 +
                           PolicyKindName(s.policy.kind).size() + 4 * 4;
  EXPECT_EQ(payload.substr(pinned_at, 4), std::string(4, '\0'));
  payload.erase(pinned_at, 4);
  return payload;
}

// The payload of `s` as version 1 or 2 wrote it: version 3's with its empty
// last turn and (for version 1) its empty pending-token count cut out: both
// sit just before the cells.
std::string OlderFullStatePayload(const SessionState& s, int version) {
  std::string payload = Version3FullStatePayload(s);
  size_t at = payload.size() - (8 + 4) - s.cache.cells.size() * 20 - 4;
  at -= kEmptyLastTurnBytes;
  EXPECT_EQ(payload.substr(at, kEmptyLastTurnBytes),
            std::string(kEmptyLastTurnBytes, '\0'));
  payload.erase(at, kEmptyLastTurnBytes);
  if (version == 1) {
    at -= 4;
    EXPECT_EQ(payload.substr(at, 4), std::string(4, '\0'));
    payload.erase(at, 4);
  }
  return payload;
}

// A state as versions before 4 could hold: no pins, no pin limit.
void DropPins(SessionState* s) {
  s->cache.pins.clear();
  MarkPinned(&s->cache);
  s->policy.max_pinned = 0;
}

TEST(SnapshotFormatTest, ReadsVersion3FullStateWithoutPins) {
  SessionState s = Random(11);
  DropPins(&s);
  const std::string payload = Version3FullStatePayload(s);
  absl::StatusOr<FullStateRecord> rec =
      DecodeFullState(Seal(RecordType::kFullState, 3, payload));
  ASSERT_TRUE(rec.ok()) << rec.status();
  s.kv.clear();
  EXPECT_EQ(store_testing::Difference(rec->state, s), "");
  EXPECT_TRUE(rec->state == s);
  // The same bytes claiming version 4 are missing fields.
  EXPECT_EQ(
      DecodeFullState(Seal(RecordType::kFullState, 4, payload)).status().code(),
      absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormatTest, PinsRoundTripAndSetCellFlags) {
  int with_pins = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    SessionState s = Random(seed);
    if (s.cache.pins.empty()) continue;
    ++with_pins;
    absl::StatusOr<FullStateRecord> rec = DecodeFullState(EncodeFullState(s, 1, 0));
    ASSERT_TRUE(rec.ok()) << rec.status();
    s.kv.clear();
    EXPECT_TRUE(rec->state == s);
    for (size_t i = 0; i < s.cache.cells.size(); ++i) {
      EXPECT_EQ(rec->state.cache.cells[i].pinned, s.cache.cells[i].pinned) << i;
    }
    EXPECT_EQ(rec->state.policy.max_pinned, s.policy.max_pinned);
  }
  EXPECT_GT(with_pins, 3);
}

TEST(SnapshotFormatTest, PinsRideInDeltas) {
  store_testing::SimOptions o;
  o.policy = PolicyConfig{PolicyKind::kStreaming, 4, 64, 0, 1.0f};
  int pin_deltas = 0;
  SessionState prev = store_testing::SimStateAt("p", o, 0);
  for (int64_t step = 1; step <= 30; ++step) {
    SessionState next = store_testing::SimStepMetadata(prev, o, step);
    next.kv = store_testing::SimRows(next, next.cache.cells);
    absl::StatusOr<SessionDelta> delta = Diff(prev, next);
    ASSERT_TRUE(delta.ok()) << delta.status();
    if (delta->pins) ++pin_deltas;
    absl::StatusOr<DeltaRecord> rec = DecodeDelta(EncodeDelta("p", step, *delta, 0));
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_TRUE(rec->delta.pins == delta->pins) << step;
    // Records carry no rows (those are K/V chunks): apply the decoded
    // metadata with the delta's rows.
    SessionDelta decoded = std::move(rec->delta);
    decoded.kv = delta->kv;
    SessionState applied = prev.Copy();
    const absl::Status applied_status = ApplyDelta(decoded, &applied);
    ASSERT_TRUE(applied_status.ok()) << step << ": " << applied_status;
    EXPECT_EQ(store_testing::Difference(applied, next), "") << step;
    for (size_t i = 0; i < next.cache.cells.size(); ++i) {
      ASSERT_EQ(applied.cache.cells[i].pinned, next.cache.cells[i].pinned) << step;
    }
    prev = std::move(next);
  }
  EXPECT_GE(pin_deltas, 6);  // pins at steps 5, 10, ..., unpins at 7, 14, ...
  // A version 3 delta cannot carry the pins bit.
  SessionDelta with_pins;
  with_pins.pins = std::vector<Pin>{Pin{"x", 0, 1}};
  const std::string payload = EncodeDelta("p", 1, with_pins, 0).substr(kFrameHeaderBytes);
  EXPECT_EQ(DecodeDelta(Seal(RecordType::kDelta, 3, payload)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormatTest, PinsThatLostTheirCellsAreDataLossOnRestore) {
  SessionState s = Random(3);
  DropPins(&s);
  // A pin over an arrival that is not a cell: the record decodes, the state
  // does not validate (a pinned cell was evicted).
  int64_t gap = -1;
  for (size_t i = 0; i + 1 < s.cache.cells.size() && gap < 0; ++i) {
    if (s.cache.cells[i + 1].arrival > s.cache.cells[i].arrival + 1) {
      gap = s.cache.cells[i].arrival + 1;
    }
  }
  ASSERT_GE(gap, 0);
  s.cache.pins.push_back(Pin{"t", gap, gap + 1});
  absl::StatusOr<FullStateRecord> rec = DecodeFullState(EncodeFullState(s, 1, 0));
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_FALSE(rec->state.ValidateMetadata().ok());
}

TEST(SnapshotFormatTest, ReadsVersion1FullStateWithoutPendingTokens) {
  SessionState s = Random(8);
  DropPins(&s);
  s.pending.clear();
  s.last_turn = CompletedTurn();
  const std::string payload = OlderFullStatePayload(s, 1);
  absl::StatusOr<FullStateRecord> rec =
      DecodeFullState(Seal(RecordType::kFullState, 1, payload));
  ASSERT_TRUE(rec.ok()) << rec.status();
  s.kv.clear();
  EXPECT_EQ(store_testing::Difference(rec->state, s), "");
  EXPECT_TRUE(rec->state == s);
  EXPECT_EQ(rec->info.kv_chunks, 2u);
  // The same bytes claiming version 2 are missing a field.
  EXPECT_EQ(
      DecodeFullState(Seal(RecordType::kFullState, 2, payload)).status().code(),
      absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormatTest, ReadsVersion2FullStateWithoutLastTurn) {
  SessionState s = Random(9);
  DropPins(&s);
  s.pending = {{17, 3.25f}};
  s.last_turn = CompletedTurn();
  // Version 2 carries the pending tokens but no last turn.
  std::string payload = Version3FullStatePayload(s);
  const size_t at = payload.size() - (8 + 4) - s.cache.cells.size() * 20 - 4 -
                    kEmptyLastTurnBytes;
  payload.erase(at, kEmptyLastTurnBytes);
  absl::StatusOr<FullStateRecord> rec =
      DecodeFullState(Seal(RecordType::kFullState, 2, payload));
  ASSERT_TRUE(rec.ok()) << rec.status();
  s.kv.clear();
  EXPECT_TRUE(rec->state == s);
  EXPECT_TRUE(rec->state.last_turn.empty());
  EXPECT_EQ(
      DecodeFullState(Seal(RecordType::kFullState, 3, payload)).status().code(),
      absl::StatusCode::kDataLoss);
}

CompletedTurn SomeTurn() {
  CompletedTurn t;
  t.turn_id = "turn-42";
  t.text = "Once upon a time";
  t.token_ids = {1, 2, 3, 500};
  t.logprobs = {-0.5f, -0.0f, -std::numeric_limits<float>::infinity(), -7.0f};
  t.stop_reason = 3;
  t.prompt_tokens = 11;
  t.generated_tokens = 4;
  t.cells_kept = 64;
  t.cells_evicted = 1234567890123;
  return t;
}

TEST(SnapshotFormatTest, LastTurnRoundTripsInFullStateAndDelta) {
  SessionState s = Random(10);
  s.last_turn = SomeTurn();
  absl::StatusOr<FullStateRecord> rec =
      DecodeFullState(EncodeFullState(s, 1, 0));
  ASSERT_TRUE(rec.ok()) << rec.status();
  s.kv.clear();
  EXPECT_TRUE(rec->state == s);
  EXPECT_TRUE(rec->state.last_turn == SomeTurn());
  EXPECT_TRUE(std::signbit(rec->state.last_turn.logprobs[1]));

  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("d", o, 10);
  SessionState next = store_testing::SimStateAt("d", o, 11);
  next.last_turn = SomeTurn();
  absl::StatusOr<SessionDelta> delta = DiffMetadata(prev, next);
  ASSERT_TRUE(delta.ok()) << delta.status();
  ASSERT_TRUE(delta->last_turn.has_value());
  absl::StatusOr<DeltaRecord> drec = DecodeDelta(EncodeDelta("d", 3, *delta, 0));
  ASSERT_TRUE(drec.ok()) << drec.status();
  EXPECT_TRUE(drec->delta == *delta);
  // Applying it carries the turn; an unchanged turn is not repeated.
  StateReplayer replayer(prev.Copy(), /*with_kv=*/false);
  ASSERT_TRUE(replayer.Apply(*delta, "").ok());
  EXPECT_TRUE(replayer.metadata().last_turn == SomeTurn());
  SessionState later = next.Copy();
  absl::StatusOr<SessionDelta> same = DiffMetadata(next, later);
  ASSERT_TRUE(same.ok());
  EXPECT_FALSE(same->last_turn.has_value());
  // A version 2 delta cannot carry the last-turn bit.
  const std::string payload =
      EncodeDelta("d", 3, *delta, 0).substr(kFrameHeaderBytes);
  EXPECT_EQ(DecodeDelta(Seal(RecordType::kDelta, 2, payload)).status().code(),
            absl::StatusCode::kDataLoss);
  // Logprobs must match the token ids.
  next.last_turn.logprobs.pop_back();
  EXPECT_FALSE(next.ValidateMetadata().ok());
}

TEST(SnapshotFormatTest, ReadsVersion1DeltaAndRefusesPendingBitThere) {
  store_testing::SimOptions o;
  SessionState prev = store_testing::SimStateAt("d", o, 10);
  SessionState next = store_testing::SimStateAt("d", o, 11);
  absl::StatusOr<SessionDelta> delta = DiffMetadata(prev, next);
  ASSERT_TRUE(delta.ok()) << delta.status();
  ASSERT_TRUE(delta->pending.has_value());  // {10, 2.5} -> {11, 2.75}
  absl::StatusOr<DeltaRecord> rec = DecodeDelta(EncodeDelta("d", 3, *delta, 0));
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_TRUE(rec->delta == *delta);
  // Without pending tokens a version 2 delta has version 1's bytes.
  SessionDelta old = delta->Copy();
  old.pending.reset();
  const std::string payload =
      EncodeDelta("d", 3, old, 0).substr(kFrameHeaderBytes);
  rec = DecodeDelta(Seal(RecordType::kDelta, 1, payload));
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_FALSE(rec->delta.pending.has_value());
  EXPECT_TRUE(rec->delta == old);
  const std::string with_pending =
      EncodeDelta("d", 3, *delta, 0).substr(kFrameHeaderBytes);
  absl::StatusOr<DeltaRecord> bad =
      DecodeDelta(Seal(RecordType::kDelta, 1, with_pending));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
}

TEST(SnapshotFormatTest, KvChunkChecksIdentity) {
  const std::string data(5000, 'k');
  const std::string value = KvChunkPrefix(7, 2, data) + data;
  absl::StatusOr<std::string_view> got = DecodeKvChunk(value, 7, 2);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, data);
  EXPECT_EQ(DecodeKvChunk(value, 7, 3).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeKvChunk(value, 8, 2).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(KvChunkCount(0, 4096), 0u);
  EXPECT_EQ(KvChunkCount(4096, 4096), 1u);
  EXPECT_EQ(KvChunkCount(4097, 4096), 2u);
}

TEST(SnapshotFormatTest, SessionHeaderRoundTrips) {
  SessionHeader h;
  h.info = SessionInfo::Of(Random(5));
  h.info.version = 1234;
  h.base_seq = 1200;
  h.incarnation = 0xDEADBEEFCAFEull;
  absl::StatusOr<SessionHeader> got =
      DecodeSessionHeader(EncodeSessionHeader(h));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info.id, h.info.id);
  EXPECT_EQ(got->info.policy, h.info.policy);
  EXPECT_EQ(got->info.cells, h.info.cells);
  EXPECT_EQ(got->info.updated_at, h.info.updated_at);
  EXPECT_EQ(got->info.kv_shape, h.info.kv_shape);
  EXPECT_EQ(got->info.version, 1234u);
  EXPECT_EQ(got->info.deltas, 34);
  EXPECT_EQ(got->base_seq, 1200u);
  EXPECT_EQ(got->incarnation, h.incarnation);
}

TEST(SnapshotFormatTest, ExportPreambleAndEnd) {
  const std::string p = EncodeExportPreamble();
  ASSERT_EQ(p.size(), kExportPreambleBytes);
  EXPECT_TRUE(CheckExportPreamble(p).ok());
  std::string bad = p;
  bad[0] = 'X';
  EXPECT_EQ(CheckExportPreamble(bad).code(), absl::StatusCode::kDataLoss);
  bad = p;
  bad[13] ^= 1;
  EXPECT_EQ(CheckExportPreamble(bad).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CheckExportPreamble(p.substr(0, 10)).code(),
            absl::StatusCode::kDataLoss);
  absl::StatusOr<uint64_t> n = DecodeExportEnd(EncodeExportEnd(17));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 17u);
}

}  // namespace
}  // namespace sinkserve::memory::snapshot
