// RocksDbSessionStore round trips: full snapshots, deltas, folding, versions,
// fingerprints, metadata reads. store_failure_test.cc covers damage and
// failing storage, store_crash_test.cc crashes.
#include "memory/session_store.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/rocksdb_session_store.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"
#include "memory/store_test_util.h"

namespace sinkserve::memory {
namespace {

using store_testing::Difference;
using store_testing::ExpectLoads;
using store_testing::RunChain;
using ::testing::HasSubstr;
using SessionStoreTest = store_testing::SessionStoreTest;

TEST_F(SessionStoreTest, PutLoadRoundTripsBitExactly) {
  RocksDbSessionStoreOptions o;
  o.kv_chunk_bytes = 256 << 10;  // several chunks per record
  RocksDbSessionStore& store = Open(o);
  std::vector<SessionState> states;
  for (int i = 0; i < 4; ++i) {
    states.push_back(BigState(100 + i, "big-" + std::to_string(i)));
    ASSERT_GT(states.back().kv.size(), 4u << 20);
    absl::StatusOr<CheckpointResult> r = store.Put(states.back());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->full);
    EXPECT_GT(r->bytes_written, states.back().kv.size());
  }
  for (const SessionState& s : states) ExpectLoads(store, s);
  // ...and after reopening (from the WAL and blob files, not the memtable).
  RocksDbSessionStore& reopened = Open(o);
  for (const SessionState& s : states) ExpectLoads(reopened, s);
  absl::StatusOr<SessionInfo> info = reopened.Info("big-2");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->cells, 300);
  EXPECT_EQ(info->policy, states[2].policy.ToString());
  EXPECT_EQ(info->rounds, states[2].rounds);
  EXPECT_EQ(info->updated_at, states[2].updated_at);
  EXPECT_EQ(info->kv_shape, states[2].kv_shape);
}

TEST_F(SessionStoreTest, DeltasGiveTheSameStateAsFullSnapshotsAndAreSmall) {
  RocksDbSessionStoreOptions o;
  o.compact_after_deltas = 0;  // keep the whole chain
  RocksDbSessionStore& store = Open(o);
  store_testing::SimOptions sim;
  sim.n_layers = 8;
  sim.kv_dim = 256;
  SessionState prev = store_testing::SimStateAt("chat", sim, 0);
  absl::StatusOr<CheckpointResult> put = store.Put(prev);
  ASSERT_TRUE(put.ok()) << put.status();
  uint64_t version = put->version;
  uint64_t max_delta_bytes = 0;
  for (int64_t step = 1; step <= 30; ++step) {
    SessionState next = store_testing::SimStateAt("chat", sim, step);
    absl::StatusOr<SessionDelta> delta = DiffMetadata(prev, next);
    ASSERT_TRUE(delta.ok()) << delta.status();
    delta->kv = store_testing::SimRows(next, delta->added);  // "ExportSlots"
    absl::StatusOr<CheckpointResult> r = store.Append("chat", version, *delta);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE(r->full);
    EXPECT_EQ(r->version, version + 1);
    version = r->version;
    max_delta_bytes = std::max(max_delta_bytes, r->bytes_written);
    ExpectLoads(store, next);
    prev = std::move(next);
  }
  absl::StatusOr<LoadedSession> chained = store.Load("chat", "sim-model");
  ASSERT_TRUE(chained.ok());
  EXPECT_EQ(chained->records, 31);
  EXPECT_EQ(chained->version, version);

  // Without its rows, the same chain gives the same metadata.
  absl::StatusOr<LoadedSession> metadata = store.LoadMetadata("chat", "sim-model");
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
  const StoreStats stats = store.stats();
  EXPECT_EQ(stats.delta_checkpoints, 30u);
  EXPECT_EQ(stats.full_checkpoints, 2u);
  EXPECT_LT(stats.delta_bytes_written / 30 * 5, full->bytes_written);
}

// Appends `steps` simulated deltas to session `id`, checking Load after each.
TEST_F(SessionStoreTest, InlineCompactionKeepsLoadsEqual) {
  RocksDbSessionStoreOptions o;
  o.compact_after_deltas = 4;
  o.background_compaction = false;
  RocksDbSessionStore& store = Open(o);
  RunChain(store, "fold", 25, false);
  const StoreStats stats = store.stats();
  EXPECT_EQ(stats.compactions, 6u);
  EXPECT_EQ(stats.compaction_errors, 0u);
  absl::StatusOr<SessionInfo> info = store.Info("fold");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->deltas, 1);  // folded at 24, one delta since
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty()) << report->bad.front().status;
}

TEST_F(SessionStoreTest, BackgroundCompactionKeepsLoadsEqual) {
  RocksDbSessionStoreOptions o;
  o.compact_after_deltas = 3;
  RocksDbSessionStore& store = Open(o);
  RunChain(store, "bg", 20, true);
  EXPECT_GE(store.stats().compactions, 5u);
  // Writers racing the compactor: each thread its own session.
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&store, t] {
      RunChain(store, "race-" + std::to_string(t), 15, false);
    });
  }
  for (std::thread& t : threads) t.join();
  store.WaitForCompactions();
  EXPECT_EQ(store.stats().compaction_errors, 0u);
  store_testing::SimOptions sim;
  for (int t = 0; t < 3; ++t) {
    ExpectLoads(
        store, store_testing::SimStateAt("race-" + std::to_string(t), sim, 15));
  }
  absl::StatusOr<VerifyReport> report = store.Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty()) << report->bad.front().status;
}

TEST_F(SessionStoreTest, AppendChecksVersionAndDelta) {
  RocksDbSessionStore& store = Open();
  store_testing::SimOptions sim;
  SessionState s0 = store_testing::SimStateAt("v", sim, 0);
  SessionState s1 = store_testing::SimStateAt("v", sim, 1);
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
  ExpectLoads(store, s0);  // nothing of the refused deltas got in

  absl::StatusOr<CheckpointResult> ok = store.Append("v", put->version, *delta);
  ASSERT_TRUE(ok.ok()) << ok.status();
  // The same delta again (a retry after a lost reply) is refused.
  EXPECT_EQ(store.Append("v", put->version, *delta).status().code(),
            absl::StatusCode::kAborted);
  ExpectLoads(store, s1);

  SessionState invalid = s1.Copy();
  invalid.kv.clear();
  EXPECT_EQ(store.Put(invalid).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SessionStoreTest, ModelFingerprintMismatchNamesBoth) {
  RocksDbSessionStore& store = Open();
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

TEST_F(SessionStoreTest, ExistsInfoListDelete) {
  RocksDbSessionStore& store = Open();
  std::mt19937_64 rng(9);
  std::vector<std::string> ids;
  for (int i = 0; i < 25; ++i) {
    ids.push_back("user" + std::to_string(1000 + i * 7));
    ASSERT_TRUE(store.Put(store_testing::RandomState(rng, ids.back())).ok());
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
}

TEST_F(SessionStoreTest, BackupOpensAsAStore) {
  RocksDbSessionStore& store = Open();
  SessionState s = BigState(7, "bk");
  ASSERT_TRUE(store.Put(s).ok());
  ASSERT_TRUE(store.Backup(dir_ + "/backup").ok());
  store_.reset();
  absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> backup =
      RocksDbSessionStore::Open(dir_ + "/backup");
  ASSERT_TRUE(backup.ok()) << backup.status();
  ExpectLoads(**backup, s);
}

}  // namespace
}  // namespace sinkserve::memory
