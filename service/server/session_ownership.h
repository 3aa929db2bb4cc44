// SessionOwnership: which sessions this server may serve, over the session
// leases of a shared store (memory::SessionLeases), without ever blocking
// the scheduler thread.
//
// Taking a lease can block for seconds (its owner is asked to hand off, or
// its lease is waited out), so claims run on a small pool of worker threads;
// the operations of one session run there one after another, in order. A
// server holds a session's lease while anyone needs it:
//   - a claim in progress (Claim ... Unclaim): an open, a create, a delete;
//   - the session being in memory (SetResident), where its turns run.
// When neither holds, the lease is released (after the session's last
// checkpoint, which SessionManager makes durable before it drops a session).
//
// Without leases (a store of one server: RocksDB, none) every claim succeeds
// at once, on the caller's thread.
#ifndef SINKSERVE_SERVICE_SERVER_SESSION_OWNERSHIP_H_
#define SINKSERVE_SERVICE_SERVER_SESSION_OWNERSHIP_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "memory/session_leases.h"
#include "service/metrics.h"

namespace sinkserve::service {

class SessionOwnership {
 public:
  using ClaimDone = std::function<void(const absl::StatusOr<memory::Acquired>&)>;

  // `leases` may be null (one server owns everything); it and `metrics`
  // (may be null) outlive this.
  SessionOwnership(memory::SessionLeases* leases, Metrics* metrics, int threads = 8);
  // Runs what is queued, then joins the workers.
  ~SessionOwnership();
  SessionOwnership(const SessionOwnership&) = delete;
  SessionOwnership& operator=(const SessionOwnership&) = delete;

  // Makes this server the owner of `id` and keeps it so until Unclaim(id).
  // `done` gets the outcome: its cause is kHeld when this server owned the
  // session already (a copy in memory is current), anything else when the
  // session moved here (a copy in memory is stale: evict it before use).
  // Runs on a worker thread, or inline when nothing needs to wait. Every
  // Claim, successful or not, is paired with one Unclaim.
  void Claim(const std::string& id, ClaimDone done);
  void Unclaim(const std::string& id);
  // Whether `id` is in this server's memory (SessionManager reports it).
  void SetResident(const std::string& id, bool resident);
  // Whether this server holds `id`'s lease now.
  bool Owns(const std::string& id) const;
  // A handoff of `id` to another server begins: claims of it are refused
  // with UNAVAILABLE until EndHandoff. False if one is under way already.
  bool BeginHandoff(const std::string& id);
  // Ends it: with `release` (the session left memory, its checkpoints are
  // durable) the lease is given up now, whoever still needs it.
  absl::Status EndHandoff(const std::string& id, bool release);
  // Server shutdown: answers queued claims with UNAVAILABLE, runs queued
  // releases, joins the workers. Afterwards claims fail and residency
  // changes are ignored (the leases run out or ReleaseAll frees them).
  void Shutdown();

 private:
  struct PerId {
    int claims = 0;
    bool resident = false;
    bool running = false;  // a worker runs one of its tasks
    bool handing_off = false;
    // Run in order; `shutting_down` tells a claim to answer UNAVAILABLE.
    std::deque<std::function<void(bool shutting_down)>> tasks;
  };
  // Locked (mu_): queues `task` for `id` after its earlier ones.
  void EnqueueLocked(const std::string& id, std::function<void(bool)> task);
  // Locked: queues a release of `id` if no one needs it any more.
  void MaybeReleaseLocked(const std::string& id, PerId& state);
  void ForgetIfIdleLocked(const std::string& id);
  void Work();

  memory::SessionLeases* const leases_;
  Metrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, PerId> ids_;  // guarded by mu_
  std::deque<std::string> ready_;     // ids with tasks and no worker, guarded by mu_
  bool stop_ = false;                 // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SESSION_OWNERSHIP_H_
