// The SessionStore conformance suite (see session_store_conformance.h):
// round trips, deltas, folding, versions, fingerprints, listing, deletion,
// damage, big sessions and concurrent writers, for any store.
#include "memory/session_store_conformance.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace sinkserve::memory::store_testing {
namespace {

using ::testing::HasSubstr;

void ExpectLoadsState(const SessionStore& store, const SessionState& want) {
  absl::StatusOr<LoadedSession> got =
      store.Load(want.id, want.model_fingerprint);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Difference(got->state, want), "") << want.id;
}

// A random state with a few MB of K/V rows.
SessionState BigState(uint64_t seed, const std::string& id, int cells = 300) {
  std::mt19937_64 rng(seed);
  RandomStateOptions o;
  o.n_layers = 8;
  o.kv_dim = 256;
  o.cells = cells;
  o.capacity = cells + 20;
  return RandomState(rng, id, o);
}

// Put, then `steps` simulated deltas, each checked by a Load; the version
// of the last checkpoint.
uint64_t RunSimChain(SessionStore& store, StoreHarness* harness,
                     const std::string& id, int steps, bool wait_for_folds) {
  SimOptions sim;
  SessionState prev = SimStateAt(id, sim, 0);
  absl::StatusOr<CheckpointResult> put = store.Put(prev);
  EXPECT_TRUE(put.ok()) << put.status();
  if (!put.ok()) return 0;
  uint64_t version = put->version;
  for (int64_t step = 1; step <= steps; ++step) {
    SessionState next = SimStateAt(id, sim, step);
    absl::StatusOr<SessionDelta> delta = Diff(prev, next);
    EXPECT_TRUE(delta.ok());
    absl::StatusOr<CheckpointResult> r = store.Append(id, version, *delta);
    EXPECT_TRUE(r.ok()) << id << " step " << step << ": " << r.status();
    if (!r.ok()) return 0;
    EXPECT_EQ(r->version, version + 1);
    version = r->version;
    if (wait_for_folds) harness->WaitForCompactions(store);
    ExpectLoadsState(store, next);
    prev = std::move(next);
  }
  return version;
}

}  // namespace

TEST_P(SessionStoreConformance, PutLoadRoundTripsBitExactly) {
  StoreTuning t;
  t.kv_chunk_bytes = 256 << 10;  // several chunks per record
  SessionStore& store = Open(t);
  std::vector<SessionState> states;
  for (int i = 0; i < 4; ++i) {
    states.push_back(BigState(100 + i, "big-" + std::to_string(i)));
    ASSERT_GT(states.back().kv.size(), 4u << 20);
    absl::StatusOr<CheckpointResult> r = store.Put(states.back());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->full);
    EXPECT_GT(r->bytes_written, states.back().kv.size());
  }
  for (const SessionState& s : states) ExpectLoadsState(store, s);
  // ...and through another instance on the same data.
  SessionStore& reopened = Open(t);
  for (const SessionState& s : states) ExpectLoadsState(reopened, s);
  absl::StatusOr<SessionInfo> info = reopened.Info("big-2");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->cells, 300);
  EXPECT_EQ(info->policy, states[2].policy.ToString());
  EXPECT_EQ(info->rounds, states[2].rounds);
  EXPECT_EQ(info->updated_at, states[2].updated_at);
  EXPECT_EQ(info->kv_shape, states[2].kv_shape);
  // A Put replaces the whole session.
  SessionState other = BigState(999, "big-2", 120);
  ASSERT_TRUE(reopened.Put(other).ok());
  ExpectLoadsState(reopened, other);
}

TEST_P(SessionStoreConformance, DeltasGiveTheSameStateAsFullSnapshotsAndAreSmall) {
  StoreTuning t;
  t.compact_after_deltas = 0;  // keep the whole chain
  SessionStore& store = Open(t);
  SimOptions sim;
  sim.n_layers = 8;
  sim.kv_dim = 256;
  SessionState prev = SimStateAt("chat", sim, 0);
  absl::StatusOr<CheckpointResult> put = store.Put(prev);
  ASSERT_TRUE(put.ok()) << put.status();
  uint64_t version = put->version;
  uint64_t max_delta_bytes = 0;
  for (int64_t step = 1; step <= 30; ++step) {
    SessionState next = SimStateAt("chat", sim, step);
    absl::StatusOr<SessionDelta> delta = DiffMetadata(prev, next);
    ASSERT_TRUE(delta.ok()) << delta.status();
    delta->kv = SimRows(next, delta->added);  // "ExportSlots"
    absl::StatusOr<CheckpointResult> r = store.Append("chat", version, *delta);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->full);
    EXPECT_EQ(r->version, version + 1);
    version = r->version;
    max_delta_bytes = std::max(max_delta_bytes, r->bytes_written);
    ExpectLoadsState(store, next);
    prev = std::move(next);
  }
  absl::StatusOr<LoadedSession> chained = store.Load("chat", "sim-model");
  ASSERT_TRUE(chained.ok());
  EXPECT_EQ(chained->records, 31);
  EXPECT_EQ(chained->version, version);

  // Without its rows, the same chain gives the same metadata.
  absl::StatusOr<LoadedSession> metadata =
      store.LoadMetadata("chat", "sim-model");
  ASSERT_TRUE(metadata.ok()) << metadata.status();
  EXPECT_TRUE(metadata->state.kv.empty());
  EXPECT_EQ(metadata->version, version);
  SessionState without_rows = chained->state.Copy();
  without_rows.kv.clear();
  EXPECT_EQ(Difference(metadata->state, without_rows), "");
  EXPECT_EQ(store.LoadMetadata("chat", "other-model").status().code(),
            absl::StatusCode::kFailedPrecondition);

  // A full snapshot of the final state stores the same thing.
  SessionState copy = prev.Copy();
  copy.id = "chat-full";
  absl::StatusOr<CheckpointResult> full = store.Put(copy);
  ASSERT_TRUE(full.ok());
  absl::StatusOr<LoadedSession> direct = store.Load("chat-full", "sim-model");
  ASSERT_TRUE(direct.ok());
  direct->state.id = "chat";
  EXPECT_EQ(Difference(direct->state, chained->state), "");

  // A delta carries at most 8 new cells of a 64-cell budget.
  EXPECT_LT(max_delta_bytes * 5, full->bytes_written)
      << "delta " << max_delta_bytes << " full " << full->bytes_written;
}

TEST_P(SessionStoreConformance, InlineFoldingKeepsLoadsEqual) {
  StoreTuning t;
  t.compact_after_deltas = 4;
  t.background_compaction = false;
  SessionStore& store = Open(t);
  RunSimChain(store, harness_.get(), "fold", 25, false);
  absl::StatusOr<SessionInfo> info = store.Info("fold");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->deltas, 1);  // folded at 24, one delta since
  absl::StatusOr<LoadedSession> loaded = store.Load("fold", "sim-model");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->records, 2);
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty()) << report->bad.front().status;
}

TEST_P(SessionStoreConformance, ConcurrentWritersToDifferentSessions) {
  StoreTuning t;
  t.compact_after_deltas = 3;  // background folds racing the writers
  SessionStore& store = Open(t);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([this, &store, i] {
      RunSimChain(store, harness_.get(), "race-" + std::to_string(i), 12,
                  false);
    });
  }
  for (std::thread& th : threads) th.join();
  harness_->WaitForCompactions(store);
  SimOptions sim;
  for (int i = 0; i < 4; ++i) {
    ExpectLoadsState(store, SimStateAt("race-" + std::to_string(i), sim, 12));
  }
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->sessions_checked, 4);
  EXPECT_TRUE(report->bad.empty()) << report->bad.front().status;
}

TEST_P(SessionStoreConformance, AppendChecksVersionAndDelta) {
  SessionStore& store = Open();
  SimOptions sim;
  SessionState s0 = SimStateAt("v", sim, 0);
  SessionState s1 = SimStateAt("v", sim, 1);
  absl::StatusOr<SessionDelta> delta = Diff(s0, s1);
  ASSERT_TRUE(delta.ok());
  EXPECT_EQ(store.Append("v", 1, *delta).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<CheckpointResult> put = store.Put(s0);
  ASSERT_TRUE(put.ok());
  absl::StatusOr<CheckpointResult> stale =
      store.Append("v", put->version - 1, *delta);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(stale.status().message()), HasSubstr("version"));

  SessionDelta bad = delta->Copy();
  bad.evicted.push_back(1 << 30);
  EXPECT_EQ(store.Append("v", put->version, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = delta->Copy();
  bad.kv.resize(bad.kv.size() - 1);
  EXPECT_EQ(store.Append("v", put->version, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  ExpectLoadsState(store, s0);  // nothing of the refused deltas got in

  absl::StatusOr<CheckpointResult> ok = store.Append("v", put->version, *delta);
  ASSERT_TRUE(ok.ok()) << ok.status();
  // The same delta again (a retry after a lost reply) is refused.
  EXPECT_EQ(store.Append("v", put->version, *delta).status().code(),
            absl::StatusCode::kAborted);
  ExpectLoadsState(store, s1);

  SessionState invalid = s1.Copy();
  invalid.kv.clear();
  EXPECT_EQ(store.Put(invalid).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(SessionStoreConformance, ModelFingerprintMismatchNamesBoth) {
  SessionStore& store = Open();
  SessionState s = BigState(1, "fp");
  s.model_fingerprint = "llama-7b@abc123";
  ASSERT_TRUE(store.Put(s).ok());
  absl::StatusOr<LoadedSession> got = store.Load("fp", "qwen-1.5b@def456");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("llama-7b@abc123"));
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("qwen-1.5b@def456"));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("fp"));
  EXPECT_TRUE(store.Load("fp", SessionStore::kAnyModel).ok());
  EXPECT_EQ(store.Load("fp", "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(SessionStoreConformance, ExistsInfoListDelete) {
  SessionStore& store = Open();
  std::mt19937_64 rng(9);
  std::vector<std::string> ids;
  for (int i = 0; i < 25; ++i) {
    ids.push_back("user" + std::to_string(1000 + i * 7));
    ASSERT_TRUE(store.Put(RandomState(rng, ids.back())).ok());
  }
  std::sort(ids.begin(), ids.end());
  absl::StatusOr<bool> exists = store.Exists(ids[3]);
  ASSERT_TRUE(exists.ok());
  EXPECT_TRUE(*exists);
  EXPECT_FALSE(*store.Exists("nobody"));
  EXPECT_EQ(store.Exists("bad id").status().code(),
            absl::StatusCode::kInvalidArgument);

  std::vector<std::string> listed;
  ListOptions options;
  options.max_sessions = 10;
  int pages = 0;
  do {
    absl::StatusOr<ListPage> page = store.List(options);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_TRUE(page->bad.empty());
    for (const SessionInfo& info : page->sessions) {
      listed.push_back(info.id);
      EXPECT_EQ(info.cells, 100);
      EXPECT_GT(info.version, 0u);
    }
    options.start_after = page->next_start_after;
    ++pages;
  } while (!options.start_after.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, ids);

  ASSERT_TRUE(store.Delete(ids[0]).ok());
  EXPECT_FALSE(*store.Exists(ids[0]));
  EXPECT_EQ(store.Delete(ids[0]).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Load(ids[0], SessionStore::kAnyModel).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Info(ids[0]).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->sessions_checked, 24);
  EXPECT_TRUE(report->bad.empty());
  // The deleted session is gone from listings; a new one of its id is new.
  absl::StatusOr<ListPage> all = store.List({});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->sessions.size(), 24u);
  EXPECT_NE(all->sessions.front().id, ids[0]);
  ASSERT_TRUE(store.Put(RandomState(rng, ids[0])).ok());
  EXPECT_TRUE(*store.Exists(ids[0]));
}

TEST_P(SessionStoreConformance, DamagedRecordIsDataLossForItsSessionOnly) {
  StoreTuning t;
  t.compact_after_deltas = 0;
  SessionStore* store = &Open(t);
  SimOptions sim;
  sim.n_layers = 8;
  sim.kv_dim = 256;
  std::vector<SessionState> finals;
  std::vector<uint64_t> first;
  for (const std::string id : {"damaged", "fine"}) {
    SessionState prev = SimStateAt(id, sim, 0);
    absl::StatusOr<CheckpointResult> r = store->Put(prev);
    ASSERT_TRUE(r.ok());
    first.push_back(r->version);
    for (int step = 1; step <= 2; ++step) {
      SessionState next = SimStateAt(id, sim, step);
      r = store->Append(id, r->version, *Diff(prev, next));
      ASSERT_TRUE(r.ok()) << r.status();
      prev = std::move(next);
    }
    finals.push_back(std::move(prev));
  }
  store = &Damage("damaged", first[0] + 1);
  absl::StatusOr<LoadedSession> got = store->Load("damaged", "sim-model");
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  const std::string msg(got.status().message());
  EXPECT_THAT(msg, HasSubstr("session damaged"));
  EXPECT_THAT(msg, HasSubstr("record " + std::to_string(first[0] + 1)));
  ExpectLoadsState(*store, finals[1]);
  absl::StatusOr<VerifyReport> report = store->Verify();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sessions_checked, 2);
  ASSERT_EQ(report->bad.size(), 1u);
  EXPECT_EQ(report->bad[0].id, "damaged");
  EXPECT_EQ(report->bad[0].status.code(), absl::StatusCode::kDataLoss);
  // A broken session can be replaced.
  ASSERT_TRUE(store->Put(finals[0]).ok());
  ExpectLoadsState(*store, finals[0]);
}

TEST_P(SessionStoreConformance, BigSessionOfTensOfMegabytes) {
  SessionStore& store = Open();
  // 8 layers x 256 kv_dim x 4 bytes x 2 x 5000 cells = 82 MB of rows.
  SessionState big = BigState(77, "huge", 5000);
  ASSERT_GT(big.kv.size(), 40u << 20);
  absl::StatusOr<CheckpointResult> r = store.Put(big);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<LoadedSession> got = store.Load("huge", big.model_fingerprint);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->bytes_read >= big.kv.size(), true);
  EXPECT_EQ(Difference(got->state, big), "");
}

TEST_P(SessionStoreConformance, ExportImportAcrossInstances) {
  SessionStore& store = Open();
  SessionState a = BigState(5, "exp-a");
  ASSERT_TRUE(store.Put(a).ok());
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string file = std::string(tmp ? tmp : "/tmp") + "/conformance." +
                           std::to_string(::testing::UnitTest::GetInstance()
                                              ->random_seed()) +
                           "." + std::to_string(reinterpret_cast<uintptr_t>(&store)) +
                           ".export";
  ASSERT_TRUE(store.Export(file).ok());
  ASSERT_TRUE(store.Delete("exp-a").ok());
  absl::StatusOr<TransferResult> imported = store.Import(file);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->sessions, 1);
  ExpectLoadsState(store, a);
  std::remove(file.c_str());
}

}  // namespace sinkserve::memory::store_testing
