// RadosSessionStore on a real throwaway Ceph cluster (scripts/cluster: one
// mon, three memstore OSDs as processes), started once for this program and
// stopped by the pids it started. Runs the SessionStore conformance suite,
// then what only a shared store has: damage through librados, fencing of a
// stale owner, and a cluster that goes away and comes back.
#include "memory/rados_session_store.h"

#include <rados/librados.hpp>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/rados_testing.h"
#include "memory/session_state.h"
#include "memory/session_store_conformance.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;
using store_testing::Difference;
using store_testing::SessionStoreConformance;
using ::testing::HasSubstr;

using rados_testing::OptionsFor;
using rados_testing::RandomNamespace;
using rados_testing::RawPool;
rados_testing::ClusterEnvironment* const cluster = rados_testing::TestCluster();

// Each test its own RADOS namespace in the `sessions` pool.
class RadosHarness : public store_testing::StoreHarness {
 public:
  std::unique_ptr<SessionStore> Open(
      const store_testing::StoreTuning& tuning) override {
    RadosSessionStoreOptions o = OptionsFor(ns_);
    o.compact_after_deltas = tuning.compact_after_deltas;
    o.background_compaction = tuning.background_compaction;
    o.kv_chunk_bytes = tuning.kv_chunk_bytes;
    absl::StatusOr<std::unique_ptr<RadosSessionStore>> s =
        RadosSessionStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return nullptr;
    return *std::move(s);
  }
  void WaitForCompactions(SessionStore& store) override {
    static_cast<RadosSessionStore&>(store).WaitForCompactions();
  }
  void DamageRecord(const std::string& id, uint64_t seq) override {
    RawPool raw(ns_);
    raw.FlipByte(raw.RecordObject(id, seq));
  }

 private:
  std::string ns_ = RandomNamespace("conformance");
};

std::unique_ptr<store_testing::StoreHarness> MakeRadosHarness() {
  if (!cluster->skip().empty()) return nullptr;  // the suite skips
  if (!cluster->failed().empty()) {
    ADD_FAILURE() << cluster->failed();
    return nullptr;
  }
  return std::make_unique<RadosHarness>();
}

INSTANTIATE_TEST_SUITE_P(Rados, SessionStoreConformance,
                         ::testing::Values(&MakeRadosHarness));

class RadosStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ns_ = RandomNamespace("rados-test"); }
  std::unique_ptr<RadosSessionStore> OpenStore(uint64_t fence = 0,
                                               absl::Duration timeout =
                                                   absl::Seconds(20)) {
    RadosSessionStoreOptions o = OptionsFor(ns_);
    o.fence = fence;
    o.op_timeout = timeout;
    absl::StatusOr<std::unique_ptr<RadosSessionStore>> s =
        RadosSessionStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  std::string ns_;
};

TEST_F(RadosStoreTest, HeaderAndKvChunkDamageNameSessionAndRecord) {
  REQUIRE_CLUSTER();
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::mt19937_64 rng(4);
  store_testing::RandomStateOptions o;
  o.n_layers = 4;
  o.kv_dim = 128;
  SessionState a = store_testing::RandomState(rng, "chunky", o);
  SessionState b = store_testing::RandomState(rng, "headless", o);
  absl::StatusOr<CheckpointResult> put = store->Put(a);
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_TRUE(store->Put(b).ok());
  RawPool raw(ns_);
  const std::string record = raw.RecordObject("chunky", put->version);
  raw.FlipByte(record.substr(0, record.size() - 1) + "1");  // kv chunk 1
  raw.FlipByte(RadosSessionStore::MetaObject("headless"));
  absl::StatusOr<LoadedSession> got = store->Load("chunky", "<any model>");
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("session chunky record " +
                        std::to_string(put->version) + " kv chunk 1"));
  // Metadata does not read the rows, so it still works.
  EXPECT_TRUE(store->LoadMetadata("chunky", SessionStore::kAnyModel).ok());
  got = store->Load("headless", SessionStore::kAnyModel);
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("session headless header"));
  absl::StatusOr<ListPage> page = store->List({});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->sessions.size(), 1u);
  ASSERT_EQ(page->bad.size(), 1u);
  EXPECT_EQ(page->bad[0].id, "headless");
  // Both can be replaced or deleted.
  ASSERT_TRUE(store->Put(b).ok());
  ASSERT_TRUE(store->Delete("chunky").ok());
  absl::StatusOr<VerifyReport> report = store->Verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->bad.empty());
}

// Two servers believe they own one session: the one fenced at the older
// epoch is refused, whatever it writes, and the session is the new owner's.
TEST_F(RadosStoreTest, StaleOwnerIsFencedOut) {
  REQUIRE_CLUSTER();
  auto probe = OpenStore();
  ASSERT_NE(probe, nullptr);
  absl::StatusOr<uint64_t> claimed = probe->BumpEpoch("owned", 0);
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  EXPECT_EQ(*claimed, 1u);
  EXPECT_FALSE(*probe->Exists("owned"));  // claimed, not written yet
  auto old_owner = OpenStore(/*fence=*/1);
  auto new_owner = OpenStore(/*fence=*/2);
  ASSERT_NE(old_owner, nullptr);
  ASSERT_NE(new_owner, nullptr);

  store_testing::SimOptions sim;
  SessionState s0 = store_testing::SimStateAt("owned", sim, 0);
  SessionState s1 = store_testing::SimStateAt("owned", sim, 1);
  SessionState s2 = store_testing::SimStateAt("owned", sim, 2);
  absl::StatusOr<CheckpointResult> v0 = old_owner->Put(s0);
  ASSERT_TRUE(v0.ok()) << v0.status();
  // Before the handover the new owner cannot write either.
  EXPECT_EQ(new_owner->Put(s0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // Handover: the new owner takes epoch 2 and continues the session.
  EXPECT_EQ(new_owner->BumpEpoch("owned", 0).status().code(),
            absl::StatusCode::kAborted);
  absl::StatusOr<uint64_t> taken = new_owner->BumpEpoch("owned", 1);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(*taken, 2u);
  absl::StatusOr<CheckpointResult> v1 =
      new_owner->Append("owned", v0->version, *Diff(s0, s1));
  ASSERT_TRUE(v1.ok()) << v1.status();

  // The paused old owner wakes up and writes what it had: every kind of
  // write is refused as fenced, nothing of it lands.
  absl::StatusOr<CheckpointResult> stale =
      old_owner->Append("owned", v1->version, *Diff(s1, s2));
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(stale.status().message()), HasSubstr("fenced"));
  EXPECT_THAT(std::string(stale.status().message()), HasSubstr("epoch 2"));
  absl::StatusOr<CheckpointResult> stale_put = old_owner->Put(s2);
  EXPECT_EQ(stale_put.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(stale_put.status().message()), HasSubstr("fenced"));
  EXPECT_EQ(old_owner->Delete("owned").code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<LoadedSession> now = probe->Load("owned", "sim-model");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->version, v1->version);
  EXPECT_EQ(Difference(now->state, s1), "");
  absl::StatusOr<uint64_t> epoch = probe->Epoch("owned");
  ASSERT_TRUE(epoch.ok());
  EXPECT_EQ(*epoch, 2u);

  // The new owner goes on; a Delete keeps the epoch, so the old owner stays
  // fenced out of a re-created session too.
  ASSERT_TRUE(new_owner->Append("owned", v1->version, *Diff(s1, s2)).ok());
  ASSERT_TRUE(new_owner->Delete("owned").ok());
  EXPECT_FALSE(*probe->Exists("owned"));
  EXPECT_EQ(old_owner->Put(s0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(new_owner->Put(s0).ok());
}

// Unfenced writers racing on one session: the version compare lets exactly
// one Append from a base version through.
TEST_F(RadosStoreTest, RacingAppendsFromOneVersionLetOneThrough) {
  REQUIRE_CLUSTER();
  auto a = OpenStore();
  auto b = OpenStore();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  store_testing::SimOptions sim;
  SessionState s0 = store_testing::SimStateAt("raced", sim, 0);
  SessionState s1 = store_testing::SimStateAt("raced", sim, 1);
  absl::StatusOr<CheckpointResult> v0 = a->Put(s0);
  ASSERT_TRUE(v0.ok());
  const SessionDelta delta = *Diff(s0, s1);
  int won = 0, aborted = 0;
  for (int round = 0; round < 5; ++round) {
    absl::StatusOr<CheckpointResult> ra, rb;
    std::thread ta([&] { ra = a->Append("raced", v0->version, delta); });
    std::thread tb([&] { rb = b->Append("raced", v0->version, delta); });
    ta.join();
    tb.join();
    won += ra.ok() + rb.ok();
    aborted += (ra.status().code() == absl::StatusCode::kAborted) +
               (rb.status().code() == absl::StatusCode::kAborted);
    v0 = a->Put(s0);
    ASSERT_TRUE(v0.ok());
  }
  EXPECT_EQ(won, 5);
  EXPECT_EQ(aborted, 5);
}

// The OSDs go away: calls fail with UNAVAILABLE within the timeout instead
// of hanging, and work again, with the data intact, once they are back.
TEST_F(RadosStoreTest, ClusterUnreachableIsUnavailableThenRecovers) {
  REQUIRE_CLUSTER();
  const absl::Duration timeout = absl::Seconds(3);
  auto store = OpenStore(0, timeout);
  ASSERT_NE(store, nullptr);
  std::mt19937_64 rng(8);
  SessionState s = store_testing::RandomState(rng, "outage");
  ASSERT_TRUE(store->Put(s).ok());
  // SIGTERM: memstore OSDs save their data and load it again on restart.
  for (int id = 0; id < 3; ++id) {
    ASSERT_TRUE(cluster->Cluster(absl::StrCat("stop-osd ", cluster->dir(),
                                              " ", id)));
  }
  absl::Time start = absl::Now();
  absl::StatusOr<LoadedSession> down = store->Load("outage", "<any model>");
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable)
      << down.status();
  EXPECT_LT(took, timeout + absl::Seconds(5));
  start = absl::Now();
  absl::StatusOr<CheckpointResult> put = store->Put(s);
  took = absl::Now() - start;
  EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable)
      << put.status();
  EXPECT_LT(took, 2 * timeout + absl::Seconds(5));
  // A new server cannot connect either, and says so in time.
  start = absl::Now();
  RadosSessionStoreOptions o = OptionsFor(ns_);
  o.op_timeout = timeout;
  absl::StatusOr<std::unique_ptr<RadosSessionStore>> fresh =
      RadosSessionStore::Open(o);
  EXPECT_FALSE(fresh.ok());
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kUnavailable)
      << fresh.status();
  EXPECT_LT(absl::Now() - start, 2 * timeout + absl::Seconds(5));

  for (int id = 0; id < 3; ++id) {
    ASSERT_TRUE(cluster->Cluster(absl::StrCat("start-osd ", cluster->dir(),
                                              " ", id)));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(90);
  absl::StatusOr<LoadedSession> back;
  do {
    back = store->Load("outage", "<any model>");
  } while (!back.ok() && absl::Now() < deadline);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(Difference(back->state, s), "");
  EXPECT_TRUE(store->Put(s).ok());
}

}  // namespace
}  // namespace sinkserve::memory
