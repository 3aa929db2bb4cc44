// RocksDbSessionStore: the shared SessionStore conformance suite
// (session_store_conformance.cc) on an embedded database, and what only this
// store has: counters, background folding, backups. store_failure_test.cc
// covers damage and failing storage, store_crash_test.cc crashes.
#include "memory/session_store.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
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
#include "memory/session_store_conformance.h"
#include "memory/session_testing.h"
#include "memory/store_test_util.h"

namespace sinkserve::memory {
namespace {

using store_testing::SessionStoreConformance;

using store_testing::Difference;
using store_testing::ExpectLoads;
using store_testing::RunChain;
using ::testing::HasSubstr;
using SessionStoreTest = store_testing::SessionStoreTest;

// A RocksDB store in a temporary directory, opened anew for each Open.
class RocksDbHarness : public store_testing::StoreHarness {
 public:
  RocksDbHarness() : dir_(store_testing::TempDir()) {}
  ~RocksDbHarness() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::unique_ptr<SessionStore> Open(
      const store_testing::StoreTuning& tuning) override {
    RocksDbSessionStoreOptions o;
    o.compact_after_deltas = tuning.compact_after_deltas;
    o.background_compaction = tuning.background_compaction;
    o.kv_chunk_bytes = tuning.kv_chunk_bytes;
    absl::StatusOr<std::unique_ptr<RocksDbSessionStore>> s =
        RocksDbSessionStore::Open(dir_ + "/db", o);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    return *std::move(s);
  }
  void WaitForCompactions(SessionStore& store) override {
    static_cast<RocksDbSessionStore&>(store).WaitForCompactions();
  }
  void DamageRecord(const std::string& id, uint64_t seq) override {
    store_testing::RawDb raw(dir_ + "/db");
    const std::string key = RocksDbSessionStore::RecordKey(id, seq, 0);
    std::string v = raw.Get(raw.kv(), key);
    v[v.size() / 2] ^= 0x10;
    raw.Put(raw.kv(), key, v);
  }

 private:
  std::string dir_;
};

std::unique_ptr<store_testing::StoreHarness> MakeRocksDbHarness() {
  return std::make_unique<RocksDbHarness>();
}

INSTANTIATE_TEST_SUITE_P(RocksDb, SessionStoreConformance,
                         ::testing::Values(&MakeRocksDbHarness));

// The shared behaviour of deltas is in the conformance suite; this checks
// RocksDB's own counters of them.
TEST_F(SessionStoreTest, DeltaCheckpointsAreCountedAndSmall) {
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
  for (int64_t step = 1; step <= 30; ++step) {
    SessionState next = store_testing::SimStateAt("chat", sim, step);
    absl::StatusOr<SessionDelta> delta = DiffMetadata(prev, next);
    ASSERT_TRUE(delta.ok()) << delta.status();
    delta->kv = store_testing::SimRows(next, delta->added);
    absl::StatusOr<CheckpointResult> r = store.Append("chat", version, *delta);
    ASSERT_TRUE(r.ok()) << r.status();
    version = r->version;
    prev = std::move(next);
  }
  SessionState copy = prev.Copy();
  copy.id = "chat-full";
  absl::StatusOr<CheckpointResult> full = store.Put(copy);
  ASSERT_TRUE(full.ok());
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
