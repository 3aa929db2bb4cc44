// RadosLeases: SessionLeases on the RADOS pool of a RadosSessionStore.
//
// The lease is a cls_lock exclusive lock named "owner" on the session's meta
// object s.<id>, taken for `duration` and renewed every duration/3 while
// held. Its cookie is "<address>|<instance>": what another server needs to
// ask this one for a handoff, and unique to this process, so a restarted
// server never mistakes its predecessor's locks for its own. On taking a
// lock the "epoch" xattr of the meta object is raised by one (a compare and
// set) and the store fences every write of the session at that epoch.
//
// A renewal that finds the lock taken by another server (or its lease run
// out while the store did not answer) marks the session lost and calls
// on_lost: the caller drops it from memory without writing it.
//
// Thread-safe. Acquire and Release of one session serialize; different
// sessions proceed in parallel.
#ifndef SINKSERVE_MEMORY_RADOS_LEASES_H_
#define SINKSERVE_MEMORY_RADOS_LEASES_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "memory/rados_session_store.h"
#include "memory/session_leases.h"

namespace sinkserve::memory {

struct RadosLeaseOptions {
  // How long a lease lasts without renewal: how long a server that stopped
  // answering keeps its sessions. Default: 2 s.
  absl::Duration duration = absl::Seconds(2);
  // Where other servers reach this one for a handoff (host:port). Required.
  std::string address;
  // Asks an owner to release a session; empty = never ask (wait leases out).
  HandoffFn handoff;
  // How long a handoff request may take. Default: 1.5 s.
  absl::Duration handoff_timeout = absl::Milliseconds(1500);
  // How long Acquire tries before UNAVAILABLE; zero = twice the lease plus
  // the handoff timeout. Default: zero.
  absl::Duration max_wait;
  // Called (on the renewal thread, no locks held) for each session whose
  // lease was found lost. Default: none.
  std::function<void(const std::string& id)> on_lost;
  // Threads renewing leases: each renewal is one round trip to an OSD.
  // Default: 4.
  int renewal_threads = 4;
};

class RadosLeases final : public SessionLeases {
 public:
  static constexpr char kLockName[] = "owner";

  // Starts renewing. The store must outlive this; from now on it refuses
  // writes of sessions not held here (RequireFences).
  static absl::StatusOr<std::unique_ptr<RadosLeases>> Start(RadosSessionStore* store,
                                                           RadosLeaseOptions options);
  // Stops renewing; held leases are left to run out (ReleaseAll gives them
  // up at once).
  ~RadosLeases() override;

  absl::StatusOr<Acquired> Acquire(std::string_view id) override;
  absl::Status Release(std::string_view id) override;
  bool Owns(std::string_view id) const override;
  const std::string& cookie() const override { return cookie_; }
  LeaseStats stats() const override;

  // Releases every held session; the first error after trying all.
  absl::Status ReleaseAll();
  // The address a cookie names ("" if it is not one of ours).
  static std::string AddressOf(std::string_view cookie);
  // Tests: stop (true) or resume renewing, as a paused process would.
  void PauseRenewalsForTesting(bool paused) { paused_.store(paused); }

 private:
  struct Held {
    uint64_t epoch = 0;
    absl::Time renewed;  // when the lock was last taken or renewed
    bool lost = false;
  };
  RadosLeases(RadosSessionStore* store, RadosLeaseOptions options);
  // The per-session mutex serializing Acquire, Release and renewals (kept
  // while anyone uses it).
  std::shared_ptr<absl::Mutex> OpLock(const std::string& id);
  // Takes the lock (EBUSY handled by the caller): 0 or a negative errno.
  int Lock(const std::string& oid, uint8_t flags) const;
  absl::StatusOr<uint64_t> RaiseEpoch(const std::string& id) const;
  void RenewLoop();
  // Renews `id`; true if its lease was found lost.
  bool Renew(const std::string& id);

  RadosSessionStore* const store_;
  const RadosLeaseOptions options_;
  const std::string cookie_;

  mutable absl::Mutex mu_;
  std::map<std::string, Held, std::less<>> held_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::weak_ptr<absl::Mutex>> op_locks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> paused_{false};
  std::thread renewer_;

  struct Counters {
    std::atomic<uint64_t> acquired[5] = {};
    std::atomic<uint64_t> released{0};
    std::atomic<uint64_t> renewals{0};
    std::atomic<uint64_t> renewal_errors{0};
    std::atomic<uint64_t> lost{0};
  };
  mutable Counters counters_;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_RADOS_LEASES_H_
