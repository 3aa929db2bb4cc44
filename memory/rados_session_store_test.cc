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
#include "memory/session_state.h"
#include "memory/session_store_conformance.h"
#include "memory/session_testing.h"

#ifndef SINKSERVE_SOURCE_DIR
#define SINKSERVE_SOURCE_DIR "."
#endif

namespace sinkserve::memory {
namespace {

namespace fs = std::filesystem;
using store_testing::Difference;
using store_testing::SessionStoreConformance;
using ::testing::HasSubstr;

std::string Run(const std::string& command, int* rc) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *rc = ::pclose(p);
  return out;
}

// scripts/cluster: from $SINKSERVE_CLUSTER, the runfiles (Bazel) or the
// source tree (CMake).
std::string ClusterScript() {
  if (const char* env = std::getenv("SINKSERVE_CLUSTER")) return env;
  if (fs::exists("scripts/cluster")) return fs::absolute("scripts/cluster");
  return std::string(SINKSERVE_SOURCE_DIR) + "/scripts/cluster";
}

// The cluster of this test program.
class ClusterEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (Run("command -v ceph-mon ceph-osd ceph rados >/dev/null 2>&1", &rc_),
        rc_ != 0) {
      skip_ = "the Ceph binaries (ceph-mon, ceph-osd, ceph-common) are not "
              "installed: run scripts/setup";
      return;
    }
    // Under /tmp, not TEST_TMPDIR: the daemons' admin sockets live in it,
    // and a Unix socket path has at most 107 bytes.
    std::string tmpl = "/tmp/rados_test.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir_ = tmpl;
    const std::string out = Run(
        absl::StrCat(ClusterScript(), " start ", dir_, " --osds 3 2>&1"), &rc_);
    if (rc_ != 0) {
      failed_ = absl::StrCat("scripts/cluster start failed: ", out);
      return;
    }
    conf_ = dir_ + "/ceph.conf";
    std::fprintf(stderr, "%s", out.c_str());
  }
  void TearDown() override {
    if (!dir_.empty()) {
      int rc = 0;
      Run(absl::StrCat(ClusterScript(), " stop ", dir_, " 2>&1"), &rc);
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }
  // Why tests cannot run: no Ceph here (skip), or the cluster did not
  // start (fail).
  const std::string& skip() const { return skip_; }
  const std::string& failed() const { return failed_; }
  bool Cluster(const std::string& args) {
    int rc = 0;
    const std::string out =
        Run(absl::StrCat(ClusterScript(), " ", args, " 2>&1"), &rc);
    EXPECT_EQ(rc, 0) << args << ": " << out;
    return rc == 0;
  }
  const std::string& conf() const { return conf_; }
  const std::string& dir() const { return dir_; }

 private:
  int rc_ = 0;
  std::string dir_, conf_, skip_, failed_;
};

ClusterEnvironment* const cluster = static_cast<ClusterEnvironment*>(
    ::testing::AddGlobalTestEnvironment(new ClusterEnvironment));

#define REQUIRE_CLUSTER()                                         \
  do {                                                            \
    if (!cluster->skip().empty()) GTEST_SKIP() << cluster->skip(); \
    ASSERT_TRUE(cluster->failed().empty()) << cluster->failed();  \
  } while (0)

std::string RandomNamespace(const std::string& prefix) {
  std::random_device rd;
  return absl::StrCat(prefix, "-", rd(), rd());
}

// Raw librados access to the pool, to damage objects like a buggy tool.
class RawPool {
 public:
  explicit RawPool(const std::string& ns) {
    EXPECT_EQ(rados_.init("admin"), 0);
    EXPECT_EQ(rados_.conf_read_file(cluster->conf().c_str()), 0);
    rados_.conf_set("rados_osd_op_timeout", "30");
    EXPECT_EQ(rados_.connect(), 0);
    EXPECT_EQ(rados_.ioctx_create("sessions", io_), 0);
    io_.set_namespace(ns);
  }
  // The record object (part 0) of `seq` of session `id`, from its record map.
  std::string RecordObject(const std::string& id, uint64_t seq) {
    std::map<std::string, librados::bufferlist> refs;
    EXPECT_EQ(io_.omap_get_vals(RadosSessionStore::MetaObject(id), "", 1000,
                                &refs),
              0);
    char key[17];
    std::snprintf(key, sizeof(key), "%016llx",
                  static_cast<unsigned long long>(seq));
    auto it = refs.find(key);
    EXPECT_NE(it, refs.end()) << "no record " << seq << " of " << id;
    if (it == refs.end()) return "";
    const std::string ref = it->second.to_str();
    return RadosSessionStore::RecordObject(id, ref.substr(0, ref.find(':')), 0);
  }
  void FlipByte(const std::string& oid) {
    librados::bufferlist bl;
    ASSERT_GT(io_.read(oid, bl, 0, 0), 0) << oid;
    std::string v = bl.to_str();
    v[v.size() / 2] ^= 0x10;
    librados::bufferlist out;
    out.append(v);
    ASSERT_EQ(io_.write_full(oid, out), 0);
  }
  librados::IoCtx& io() { return io_; }

 private:
  librados::Rados rados_;
  librados::IoCtx io_;
};

RadosSessionStoreOptions OptionsFor(const std::string& ns) {
  RadosSessionStoreOptions o;
  o.conf_path = cluster->conf();
  o.rados_namespace = ns;
  o.op_timeout = absl::Seconds(20);
  return o;
}

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
