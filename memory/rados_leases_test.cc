// RadosLeases on the program's real Ceph cluster (rados_testing.h): two
// "servers" (a store and its leases each) share one namespace and take a
// session from each other in every way a handoff can go. Leases are short
// (600 ms) so the waits stay short; the epochs and the store's fencing are
// what the assertions check, not the timings.
#include "memory/rados_leases.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/rados_testing.h"
#include "memory/session_state.h"
#include "memory/session_testing.h"

namespace sinkserve::memory {
namespace {

using rados_testing::OptionsFor;
using rados_testing::RandomNamespace;
using store_testing::Difference;
using ::testing::HasSubstr;

constexpr absl::Duration kLease = absl::Milliseconds(600);

// One server: its store connection, its leases and what it was told.
struct Server {
  std::unique_ptr<RadosSessionStore> store;
  std::unique_ptr<RadosLeases> leases;
  absl::Mutex mu;
  std::vector<std::string> lost ABSL_GUARDED_BY(mu);
  // How this server answers a handoff request (the test sets it).
  std::function<HandoffAnswer(const std::string& id)> answer;

  bool WasLost(const std::string& id, absl::Duration within) {
    const absl::Time deadline = absl::Now() + within;
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu);
        if (std::find(lost.begin(), lost.end(), id) != lost.end()) return true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
};

class RadosLeasesTest : public ::testing::Test {
 protected:
  void SetUp() override { ns_ = RandomNamespace("leases-test"); }

  // Starts a server whose handoff requests reach the other servers of this
  // test by address, the way the gRPC HandOff call would.
  Server* StartServer(const std::string& address,
                      absl::Duration max_wait = absl::ZeroDuration()) {
    auto server = std::make_unique<Server>();
    absl::StatusOr<std::unique_ptr<RadosSessionStore>> store =
        RadosSessionStore::Open(OptionsFor(ns_));
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    server->store = *std::move(store);
    RadosLeaseOptions o;
    o.duration = kLease;
    o.address = address;
    o.handoff_timeout = absl::Milliseconds(300);
    o.max_wait = max_wait;
    Server* self = server.get();
    o.on_lost = [self](const std::string& id) {
      absl::MutexLock lock(&self->mu);
      self->lost.push_back(id);
    };
    o.handoff = [this](const std::string& owner_address, const std::string& cookie,
                       const std::string& id, absl::Duration) {
      for (auto& [addr, s] : servers_) {
        if (addr != owner_address) continue;
        if (s->leases->cookie() != cookie) return HandoffAnswer::kOwnerGone;
        return s->answer ? s->answer(id) : HandoffAnswer::kNoAnswer;
      }
      return HandoffAnswer::kOwnerGone;
    };
    absl::StatusOr<std::unique_ptr<RadosLeases>> leases =
        RadosLeases::Start(server->store.get(), std::move(o));
    EXPECT_TRUE(leases.ok()) << leases.status();
    if (!leases.ok()) return nullptr;
    server->leases = *std::move(leases);
    servers_.emplace_back(address, std::move(server));
    return servers_.back().second.get();
  }

  absl::StatusOr<Acquired> Acquire(Server* s, const std::string& id) {
    return s->leases->Acquire(id);
  }

  std::string ns_;
  std::vector<std::pair<std::string, std::unique_ptr<Server>>> servers_;
  store_testing::SimOptions sim_;
};

TEST_F(RadosLeasesTest, FreeSessionIsTakenAtEpochOneAndOnlyItsOwnerWrites) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  Server* b = StartServer("b:1");
  ASSERT_TRUE(a && b);
  absl::StatusOr<Acquired> got = Acquire(a, "free");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->epoch, 1u);
  EXPECT_EQ(got->cause, AcquireCause::kFree);
  EXPECT_TRUE(a->leases->Owns("free"));
  EXPECT_FALSE(b->leases->Owns("free"));
  // Claimed, not written: no session yet.
  EXPECT_FALSE(*a->store->Exists("free"));

  const SessionState s0 = store_testing::SimStateAt("free", sim_, 0);
  absl::StatusOr<CheckpointResult> v0 = a->store->Put(s0);
  ASSERT_TRUE(v0.ok()) << v0.status();
  // Taking it again is a no-op at the same epoch.
  got = Acquire(a, "free");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cause, AcquireCause::kHeld);
  EXPECT_EQ(got->epoch, 1u);

  // A server with leases writes only what it holds.
  absl::Status refused = b->store->Put(s0).status();
  EXPECT_TRUE(IsFenced(refused)) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("not held"));
  // Renewals keep it alive well past one lease.
  absl::SleepFor(3 * kLease);
  EXPECT_TRUE(a->leases->Owns("free"));
  EXPECT_GE(a->leases->stats().renewals, 3u);
  const SessionState s1 = store_testing::SimStateAt("free", sim_, 1);
  ASSERT_TRUE(a->store->Append("free", v0->version, *Diff(s0, s1)).ok());

  // Released, the other server takes it at once, at the next epoch.
  ASSERT_TRUE(a->leases->Release("free").ok());
  EXPECT_FALSE(a->leases->Owns("free"));
  got = Acquire(b, "free");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->cause, AcquireCause::kFree);
  EXPECT_EQ(got->epoch, 2u);
  EXPECT_LT(got->waited, kLease);
  EXPECT_TRUE(IsFenced(a->store->Put(s1).status()));
  absl::StatusOr<LoadedSession> now = b->store->Load("free", "sim-model");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(Difference(now->state, s1), "");
}

TEST_F(RadosLeasesTest, LiveOwnerHandsOffWhenAsked) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  Server* b = StartServer("b:1");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Acquire(a, "moving").ok());
  const SessionState s0 = store_testing::SimStateAt("moving", sim_, 0);
  ASSERT_TRUE(a->store->Put(s0).ok());
  std::atomic<int> asked{0};
  a->answer = [&](const std::string& id) {
    ++asked;
    EXPECT_TRUE(a->leases->Release(id).ok());
    return HandoffAnswer::kReleased;
  };
  absl::StatusOr<Acquired> got = Acquire(b, "moving");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(asked.load(), 1);
  EXPECT_EQ(got->cause, AcquireCause::kHandedOff);
  EXPECT_EQ(got->previous_owner, "a:1");
  EXPECT_EQ(got->epoch, 2u);
  EXPECT_LT(got->waited, kLease);  // no lease was waited out
  EXPECT_FALSE(a->leases->Owns("moving"));
  // A released session is not "lost": nothing to drop.
  EXPECT_FALSE(a->WasLost("moving", 2 * kLease));
  EXPECT_EQ(b->leases->stats().acquired[static_cast<int>(AcquireCause::kHandedOff)], 1u);
}

// The owner's process is gone (or another process answers at its address):
// its lease is broken at once. If it was alive after all, it finds its lease
// taken on its next renewal, and every write it still makes is fenced.
TEST_F(RadosLeasesTest, GoneOwnerIsBrokenAndFencedOut) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  Server* b = StartServer("b:1");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Acquire(a, "orphan").ok());
  const SessionState s0 = store_testing::SimStateAt("orphan", sim_, 0);
  const SessionState s1 = store_testing::SimStateAt("orphan", sim_, 1);
  const SessionState s2 = store_testing::SimStateAt("orphan", sim_, 2);
  absl::StatusOr<CheckpointResult> v0 = a->store->Put(s0);
  ASSERT_TRUE(v0.ok());
  a->answer = [](const std::string&) { return HandoffAnswer::kOwnerGone; };

  absl::StatusOr<Acquired> got = Acquire(b, "orphan");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->cause, AcquireCause::kOwnerGone);
  EXPECT_EQ(got->epoch, 2u);
  EXPECT_LT(got->waited, kLease);
  absl::StatusOr<CheckpointResult> v1 =
      b->store->Append("orphan", v0->version, *Diff(s0, s1));
  ASSERT_TRUE(v1.ok()) << v1.status();

  // The old owner still believes; its write is refused by RADOS.
  const uint64_t fenced_before = a->store->stats().fenced_writes;
  absl::Status stale = a->store->Append("orphan", v1->version, *Diff(s1, s2)).status();
  EXPECT_TRUE(IsFenced(stale)) << stale;
  EXPECT_THAT(std::string(stale.message()), HasSubstr("epoch 2"));
  EXPECT_EQ(a->store->stats().fenced_writes, fenced_before + 1);
  // Its next renewal finds the lock taken: lost, reported, not owned.
  EXPECT_TRUE(a->WasLost("orphan", 3 * kLease));
  EXPECT_FALSE(a->leases->Owns("orphan"));
  EXPECT_EQ(a->leases->stats().lost, 1u);
  absl::StatusOr<LoadedSession> now = b->store->Load("orphan", "sim-model");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->version, v1->version);
  EXPECT_EQ(Difference(now->state, s1), "");
  // Taking it back goes through the store, at a new epoch.
  b->answer = [&](const std::string& id) {
    EXPECT_TRUE(b->leases->Release(id).ok());
    return HandoffAnswer::kReleased;
  };
  got = Acquire(a, "orphan");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->epoch, 3u);
}

// A paused owner (SIGSTOP, a long GC, a partition) answers nothing: its
// lease is waited out. When it wakes it finds the session lost.
TEST_F(RadosLeasesTest, SilentOwnerIsWaitedOutThenFindsItselfLost) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  Server* b = StartServer("b:1");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Acquire(a, "paused").ok());
  const SessionState s0 = store_testing::SimStateAt("paused", sim_, 0);
  ASSERT_TRUE(a->store->Put(s0).ok());
  a->answer = [](const std::string&) { return HandoffAnswer::kNoAnswer; };
  a->leases->PauseRenewalsForTesting(true);

  absl::StatusOr<Acquired> got = Acquire(b, "paused");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->cause, AcquireCause::kExpired);
  EXPECT_EQ(got->epoch, 2u);
  // It had to wait for the lease, not much longer than one lease.
  EXPECT_GT(got->waited, kLease / 4);
  EXPECT_LT(got->waited, 2 * kLease + absl::Seconds(2));

  a->leases->PauseRenewalsForTesting(false);
  EXPECT_TRUE(a->WasLost("paused", 3 * kLease));
  EXPECT_FALSE(a->leases->Owns("paused"));
  EXPECT_TRUE(IsFenced(a->store->Put(s0).status()));
  // Releasing a lost session leaves the new owner's lock alone.
  ASSERT_TRUE(a->leases->Release("paused").ok());
  EXPECT_TRUE(b->leases->Owns("paused"));
  absl::SleepFor(2 * kLease);
  EXPECT_TRUE(b->leases->Owns("paused"));
}

// An owner that keeps renewing but does not hand off (overloaded) keeps the
// session: Acquire gives up with UNAVAILABLE after max_wait, nothing moves.
TEST_F(RadosLeasesTest, RenewingOwnerThatDoesNotAnswerKeepsTheSession) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  Server* b = StartServer("b:1", /*max_wait=*/absl::Milliseconds(1500));
  ASSERT_TRUE(a && b);
  absl::StatusOr<Acquired> first = Acquire(a, "busy");
  ASSERT_TRUE(first.ok());
  a->answer = [](const std::string&) { return HandoffAnswer::kNoAnswer; };
  absl::StatusOr<Acquired> got = Acquire(b, "busy");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("a:1"));
  EXPECT_TRUE(a->leases->Owns("busy"));
  EXPECT_FALSE(b->leases->Owns("busy"));
  EXPECT_TRUE(a->store->Put(store_testing::SimStateAt("busy", sim_, 0)).ok());
  absl::StatusOr<uint64_t> epoch = a->store->Epoch("busy");
  ASSERT_TRUE(epoch.ok());
  EXPECT_EQ(*epoch, first->epoch);
}

// SIGTERM drain: every lease given up at once, so the next server does not
// wait; and a new process at the same address is not mistaken for the old.
TEST_F(RadosLeasesTest, ReleaseAllFreesEverySession) {
  REQUIRE_CLUSTER();
  Server* a = StartServer("a:1");
  ASSERT_TRUE(a);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Acquire(a, "drain" + std::to_string(i)).ok());
  }
  EXPECT_EQ(a->leases->stats().owned, 5);
  ASSERT_TRUE(a->leases->ReleaseAll().ok());
  EXPECT_EQ(a->leases->stats().owned, 0);
  Server* again = StartServer("a:1");
  ASSERT_TRUE(again);
  EXPECT_NE(again->leases->cookie(), a->leases->cookie());
  EXPECT_EQ(RadosLeases::AddressOf(again->leases->cookie()), "a:1");
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Acquired> got = Acquire(again, "drain" + std::to_string(i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->cause, AcquireCause::kFree);
    EXPECT_EQ(got->epoch, 2u);
  }
}

TEST_F(RadosLeasesTest, BadOptionsAndIdsAreRefused) {
  REQUIRE_CLUSTER();
  absl::StatusOr<std::unique_ptr<RadosSessionStore>> store =
      RadosSessionStore::Open(OptionsFor(ns_));
  ASSERT_TRUE(store.ok());
  RadosLeaseOptions o;
  EXPECT_EQ(RadosLeases::Start(store->get(), o).status().code(),
            absl::StatusCode::kInvalidArgument);  // no address
  o.address = "x:1";
  o.duration = absl::Milliseconds(10);
  EXPECT_EQ(RadosLeases::Start(store->get(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  Server* a = StartServer("a:1");
  ASSERT_TRUE(a);
  EXPECT_EQ(Acquire(a, "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Acquire(a, std::string(300, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sinkserve::memory
