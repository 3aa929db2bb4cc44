#include "service/server/session_ownership.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/server/log.h"

namespace sinkserve::service {

SessionOwnership::SessionOwnership(memory::SessionLeases* leases, Metrics* metrics, int threads)
    : leases_(leases), metrics_(metrics) {
  if (leases_ == nullptr) return;
  for (int i = 0; i < std::max(threads, 1); ++i) workers_.emplace_back([this] { Work(); });
}

SessionOwnership::~SessionOwnership() { Shutdown(); }

void SessionOwnership::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

void SessionOwnership::EnqueueLocked(const std::string& id, std::function<void(bool)> task) {
  PerId& state = ids_[id];
  state.tasks.push_back(std::move(task));
  if (!state.running && state.tasks.size() == 1) {
    ready_.push_back(id);
    cv_.notify_one();
  }
}

void SessionOwnership::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || !ready_.empty(); });
    if (ready_.empty()) return;  // stopping, nothing left
    const std::string id = std::move(ready_.front());
    ready_.pop_front();
    PerId& state = ids_[id];
    // One task per turn, so that the sessions queued behind a claim that
    // waits out a lease get a worker in between.
    std::function<void(bool)> task = std::move(state.tasks.front());
    state.tasks.pop_front();
    state.running = true;
    const bool stopping = stop_;
    lock.unlock();
    task(stopping);
    lock.lock();
    PerId& after = ids_[id];
    after.running = false;
    if (!after.tasks.empty()) {
      ready_.push_back(id);
      cv_.notify_one();
    } else {
      ForgetIfIdleLocked(id);
    }
  }
}

void SessionOwnership::ForgetIfIdleLocked(const std::string& id) {
  auto it = ids_.find(id);
  if (it == ids_.end()) return;
  const PerId& s = it->second;
  if (s.claims == 0 && !s.resident && !s.running && !s.handing_off && s.tasks.empty()) {
    ids_.erase(it);
  }
}

void SessionOwnership::Claim(const std::string& id, ClaimDone done) {
  if (leases_ == nullptr) {
    done(memory::Acquired{0, memory::AcquireCause::kHeld, absl::ZeroDuration(), ""});
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  PerId& state = ids_[id];
  ++state.claims;
  if (stop_ || state.handing_off) {
    lock.unlock();
    done(absl::UnavailableError(
        stop_ ? std::string("the server is shutting down")
              : absl::StrCat("session ", id, " is moving to another server; retry")));
    return;
  }
  // Held and nothing queued before: no need to wait for a worker. (A lease
  // lost from here on is reported by on_lost like any other loss.)
  if (state.tasks.empty() && !state.running && leases_->Owns(id)) {
    lock.unlock();
    done(memory::Acquired{0, memory::AcquireCause::kHeld, absl::ZeroDuration(), ""});
    return;
  }
  EnqueueLocked(id, [this, id, done = std::move(done)](bool shutting_down) {
    if (shutting_down) {
      done(absl::UnavailableError("the server is shutting down"));
      return;
    }
    absl::StatusOr<memory::Acquired> got = leases_->Acquire(id);
    if (got.ok() && got->cause != memory::AcquireCause::kHeld) {
      ServerLog("took over session ", id, " (", memory::AcquireCauseName(got->cause),
                got->previous_owner.empty() ? "" : " from " + got->previous_owner, ", epoch ",
                got->epoch, ", ", absl::FormatDuration(got->waited), ")");
      if (metrics_ != nullptr) {
        metrics_->ObserveTakeover(memory::AcquireCauseName(got->cause),
                                  absl::ToDoubleSeconds(got->waited));
      }
    }
    done(got);
  });
}

void SessionOwnership::Unclaim(const std::string& id) {
  if (leases_ == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ids_.find(id);
  if (it == ids_.end() || it->second.claims == 0) return;
  --it->second.claims;
  MaybeReleaseLocked(id, it->second);
}

void SessionOwnership::SetResident(const std::string& id, bool resident) {
  if (leases_ == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!resident && ids_.count(id) == 0) return;
  PerId& state = ids_[id];
  state.resident = resident;
  MaybeReleaseLocked(id, state);
}

void SessionOwnership::MaybeReleaseLocked(const std::string& id, PerId& state) {
  if (state.claims > 0 || state.resident) return;
  if (stop_) {
    ForgetIfIdleLocked(id);
    return;
  }
  // Decided again when it runs: a claim may come in between.
  EnqueueLocked(id, [this, id](bool) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = ids_.find(id);
      if (it != ids_.end() && (it->second.claims > 0 || it->second.resident)) return;
    }
    if (absl::Status s = leases_->Release(id); !s.ok()) {
      ServerLog("releasing session ", id, ": ", s.ToString());
    }
  });
}

bool SessionOwnership::Owns(const std::string& id) const {
  return leases_ == nullptr || leases_->Owns(id);
}

bool SessionOwnership::BeginHandoff(const std::string& id) {
  if (leases_ == nullptr) return false;
  std::lock_guard<std::mutex> lock(mu_);
  PerId& state = ids_[id];
  if (state.handing_off) return false;
  state.handing_off = true;
  return true;
}

absl::Status SessionOwnership::EndHandoff(const std::string& id, bool release) {
  if (leases_ == nullptr) return absl::OkStatus();
  absl::Status s = release ? leases_->Release(id) : absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ids_.find(id);
  if (it != ids_.end()) {
    it->second.handing_off = false;
    ForgetIfIdleLocked(id);
  }
  return s;
}

}  // namespace sinkserve::service
