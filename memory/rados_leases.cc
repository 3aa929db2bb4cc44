#include "memory/rados_leases.h"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "memory/rados_cluster.h"
#include "memory/session_state.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {
namespace {

constexpr char kEpochXattr[] = "epoch";
constexpr char kVersionXattr[] = "version";
// Separates the handoff address from the instance in a lock cookie.
constexpr char kCookieSeparator = '|';
// Sessions one renewal thread takes per round before another one helps.
constexpr size_t kRenewalsPerThread = 16;

librados::bufferlist Bl(std::string_view s) {
  librados::bufferlist bl;
  bl.append(s.data(), s.size());
  return bl;
}

absl::Status RadosError(int r, absl::string_view what) {
  // Lock and xattr calls fail only when the cluster does not do them now.
  return absl::UnavailableError(absl::StrCat("session leases: ", what, ": ", std::strerror(-r)));
}

}  // namespace

RadosLeases::RadosLeases(RadosSessionStore* store, RadosLeaseOptions options)
    : store_(store),
      options_(std::move(options)),
      cookie_(absl::StrCat(options_.address, std::string(1, kCookieSeparator),
                           absl::Hex(std::random_device{}(), absl::kZeroPad8),
                           absl::Hex(std::random_device{}(), absl::kZeroPad8))) {}

absl::StatusOr<std::unique_ptr<RadosLeases>> RadosLeases::Start(RadosSessionStore* store,
                                                                RadosLeaseOptions options) {
  if (options.address.empty() ||
      options.address.find(kCookieSeparator) != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session leases: the handoff address '", options.address,
        "' must be set (host:port) and must not contain '", std::string(1, kCookieSeparator),
        "'"));
  }
  if (options.duration < absl::Milliseconds(300) || options.duration > absl::Hours(1) ||
      options.renewal_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session leases: duration ", absl::FormatDuration(options.duration),
        " must be in [300ms, 1h] and renewal threads ", options.renewal_threads, " >= 1"));
  }
  if (options.max_wait == absl::ZeroDuration()) {
    options.max_wait = 2 * options.duration + options.handoff_timeout;
  }
  std::unique_ptr<RadosLeases> leases(new RadosLeases(store, std::move(options)));
  store->RequireFences();
  RadosLeases* self = leases.get();
  leases->renewer_ = std::thread([self] { self->RenewLoop(); });
  return leases;
}

RadosLeases::~RadosLeases() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (renewer_.joinable()) renewer_.join();
}

std::string RadosLeases::AddressOf(std::string_view cookie) {
  const size_t sep = cookie.rfind(kCookieSeparator);
  return sep == std::string_view::npos ? std::string() : std::string(cookie.substr(0, sep));
}

std::shared_ptr<absl::Mutex> RadosLeases::OpLock(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (op_locks_.size() > 64 + 2 * held_.size()) {
    for (auto it = op_locks_.begin(); it != op_locks_.end();) {
      it = it->second.expired() ? op_locks_.erase(it) : std::next(it);
    }
  }
  std::weak_ptr<absl::Mutex>& slot = op_locks_[id];
  std::shared_ptr<absl::Mutex> m = slot.lock();
  if (m == nullptr) {
    m = std::make_shared<absl::Mutex>();
    slot = m;
  }
  return m;
}

int RadosLeases::Lock(const std::string& oid, uint8_t flags) const {
  struct timeval tv;
  const int64_t us = absl::ToInt64Microseconds(options_.duration);
  tv.tv_sec = static_cast<time_t>(us / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
  return store_->cluster_->io.lock_exclusive(oid, kLockName, cookie_, "sinkserve session owner",
                                             &tv, flags);
}

absl::StatusOr<uint64_t> RadosLeases::RaiseEpoch(const std::string& id) const {
  librados::IoCtx& io = store_->cluster_->io;
  const std::string oid = RadosSessionStore::MetaObject(id);
  for (int attempt = 0; attempt < 8; ++attempt) {
    librados::bufferlist bl;
    int r = io.getxattr(oid, kEpochXattr, bl);
    uint64_t epoch = 0;
    if (r < 0) return RadosError(r, absl::StrCat("reading the epoch of session ", id));
    if (!absl::SimpleAtoi(absl::string_view(bl.c_str(), bl.length()), &epoch)) {
      return absl::DataLossError(absl::StrCat("session ", id, ": unreadable epoch xattr"));
    }
    librados::ObjectWriteOperation op;
    op.cmpxattr(kEpochXattr, LIBRADOS_CMPXATTR_OP_EQ, epoch);
    op.setxattr(kEpochXattr, Bl(absl::StrCat(epoch + 1)));
    r = io.operate(oid, &op);
    if (r == 0) return epoch + 1;
    // Someone raised it without the lock: a store user without leases.
    if (r != -ECANCELED) {
      return RadosError(r, absl::StrCat("raising the epoch of session ", id));
    }
  }
  return absl::AbortedError(absl::StrCat("session ", id, ": its epoch keeps moving"));
}

absl::StatusOr<Acquired> RadosLeases::Acquire(std::string_view id_view) {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(id_view));
  const std::string id(id_view);
  const absl::Time start = absl::Now();
  std::shared_ptr<absl::Mutex> op_lock = OpLock(id);
  absl::MutexLock op(op_lock.get());
  {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(id);
    if (it != held_.end() && !it->second.lost) {
      counters_.acquired[static_cast<int>(AcquireCause::kHeld)].fetch_add(1);
      return Acquired{it->second.epoch, AcquireCause::kHeld, absl::Now() - start, ""};
    }
    if (it != held_.end()) held_.erase(it);
  }
  store_->ClearFence(id);
  librados::IoCtx& io = store_->cluster_->io;
  const std::string oid = RadosSessionStore::MetaObject(id);
  {
    // The lock lives on the meta object: make sure it exists, with both
    // xattrs the store's guarded commits compare.
    librados::ObjectWriteOperation create;
    create.create(/*exclusive=*/true);
    create.setxattr(kEpochXattr, Bl("0"));
    create.setxattr(kVersionXattr, Bl("0"));
    const int r = io.operate(oid, &create);
    if (r < 0 && r != -EEXIST) return RadosError(r, absl::StrCat("claiming session ", id));
  }

  const absl::Time deadline = start + options_.max_wait;
  AcquireCause cause = AcquireCause::kFree;
  std::string previous;
  bool asked = false;
  absl::Time locked_at;
  while (true) {
    locked_at = absl::Now();
    int r = Lock(oid, 0);
    if (r == 0) break;
    // EEXIST: this process holds it already (a release whose unlock failed).
    if (r == -EEXIST) {
      r = Lock(oid, LIBRADOS_LOCK_FLAG_MAY_RENEW);
      if (r == 0) break;
    }
    if (r != -EBUSY) return RadosError(r, absl::StrCat("locking session ", id));
    int exclusive = 0;
    std::string tag;
    std::list<librados::locker_t> lockers;
    r = io.list_lockers(oid, kLockName, &exclusive, &tag, &lockers);
    if (r < 0) return RadosError(r, absl::StrCat("reading the owner of session ", id));
    if (lockers.empty()) continue;  // it ran out meanwhile
    const librados::locker_t owner = lockers.front();
    previous = AddressOf(owner.cookie);
    if (!asked) {
      asked = true;
      cause = AcquireCause::kExpired;
      if (options_.handoff && !previous.empty()) {
        switch (options_.handoff(previous, owner.cookie, id, options_.handoff_timeout)) {
          case HandoffAnswer::kReleased:
            cause = AcquireCause::kHandedOff;
            continue;
          case HandoffAnswer::kOwnerGone:
            // Safe even if the owner were alive after all: the epoch raised
            // below refuses everything it would still write.
            r = io.break_lock(oid, kLockName, owner.client, owner.cookie);
            if (r < 0 && r != -ENOENT) {
              return RadosError(r, absl::StrCat("breaking the lease on session ", id));
            }
            cause = AcquireCause::kOwnerGone;
            continue;
          case HandoffAnswer::kNoAnswer:
            break;
        }
      }
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "session ", id, " is held by the server at ", previous.empty() ? "?" : previous,
          ", which neither released it nor let its lease run out within ",
          absl::FormatDuration(options_.max_wait), "; retry"));
    }
    absl::SleepFor(std::min(absl::Milliseconds(50), options_.duration / 10));
  }
  absl::StatusOr<uint64_t> epoch = RaiseEpoch(id);
  if (!epoch.ok()) {
    io.unlock(oid, kLockName, cookie_);
    return epoch.status();
  }
  {
    absl::MutexLock lock(&mu_);
    held_[id] = Held{*epoch, locked_at, false};
  }
  store_->SetFence(id, *epoch);
  counters_.acquired[static_cast<int>(cause)].fetch_add(1);
  return Acquired{*epoch, cause, absl::Now() - start, previous};
}

absl::Status RadosLeases::Release(std::string_view id_view) {
  const std::string id(id_view);
  std::shared_ptr<absl::Mutex> op_lock = OpLock(id);
  absl::MutexLock op(op_lock.get());
  bool lost = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(id);
    if (it == held_.end()) return absl::OkStatus();
    lost = it->second.lost;
    held_.erase(it);
  }
  store_->ClearFence(id);
  counters_.released.fetch_add(1);
  if (lost) return absl::OkStatus();
  const int r = store_->cluster_->io.unlock(RadosSessionStore::MetaObject(id), kLockName, cookie_);
  // Gone already (ran out, broken): nothing to give up.
  if (r < 0 && r != -ENOENT && r != -EBUSY) {
    return RadosError(r, absl::StrCat("releasing session ", id, " (its lease will run out)"));
  }
  return absl::OkStatus();
}

absl::Status RadosLeases::ReleaseAll() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, held] : held_) ids.push_back(id);
  }
  absl::Status first;
  for (const std::string& id : ids) first.Update(Release(id));
  return first;
}

bool RadosLeases::Owns(std::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(id);
  return it != held_.end() && !it->second.lost;
}

bool RadosLeases::Renew(const std::string& id) {
  std::shared_ptr<absl::Mutex> op_lock = OpLock(id);
  absl::MutexLock op(op_lock.get());
  Held held;
  {
    absl::MutexLock lock(&mu_);
    auto it = held_.find(id);
    if (it == held_.end() || it->second.lost) return false;
    held = it->second;
  }
  const std::string oid = RadosSessionStore::MetaObject(id);
  const absl::Time now = absl::Now();
  const bool ran_out = now - held.renewed > options_.duration;
  const int r = Lock(oid, LIBRADOS_LOCK_FLAG_MAY_RENEW);
  bool lost = false;
  if (r == 0) {
    counters_.renewals.fetch_add(1);
    if (ran_out) {
      // It ran out before this renewal took it again: another server may
      // have owned the session in between (and raised its epoch).
      librados::bufferlist bl;
      uint64_t epoch = 0;
      lost = store_->cluster_->io.getxattr(oid, kEpochXattr, bl) < 0 ||
             !absl::SimpleAtoi(absl::string_view(bl.c_str(), bl.length()), &epoch) ||
             epoch != held.epoch;
    }
  } else if (r == -EBUSY) {
    lost = true;
  } else {
    counters_.renewal_errors.fetch_add(1);
    lost = ran_out;
  }
  absl::MutexLock lock(&mu_);
  auto it = held_.find(id);
  if (it == held_.end()) return false;
  if (lost) {
    it->second.lost = true;
    counters_.lost.fetch_add(1);
  } else if (r == 0) {
    it->second.renewed = now;
  }
  return lost;
}

void RadosLeases::RenewLoop() {
  const absl::Duration period = options_.duration / 3;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopping), period);
      if (stop_) return;
    }
    if (paused_.load()) continue;
    std::vector<std::string> ids;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, held] : held_) {
        if (!held.lost) ids.push_back(id);
      }
    }
    const size_t threads = std::min<size_t>(
        options_.renewal_threads, (ids.size() + kRenewalsPerThread - 1) / kRenewalsPerThread);
    std::vector<std::vector<std::string>> lost(std::max<size_t>(threads, 1));
    auto renew_slice = [&](size_t t) {
      for (size_t i = t; i < ids.size(); i += lost.size()) {
        if (Renew(ids[i])) lost[t].push_back(ids[i]);
      }
    };
    std::vector<std::thread> helpers;
    for (size_t t = 1; t < lost.size(); ++t) helpers.emplace_back(renew_slice, t);
    renew_slice(0);
    for (std::thread& h : helpers) h.join();
    if (options_.on_lost) {
      for (const auto& slice : lost) {
        for (const std::string& id : slice) options_.on_lost(id);
      }
    }
  }
}

LeaseStats RadosLeases::stats() const {
  LeaseStats s;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, held] : held_) s.owned += held.lost ? 0 : 1;
  }
  for (int i = 0; i < 5; ++i) s.acquired[i] = counters_.acquired[i].load();
  s.released = counters_.released.load();
  s.renewals = counters_.renewals.load();
  s.renewal_errors = counters_.renewal_errors.load();
  s.lost = counters_.lost.load();
  return s;
}

}  // namespace sinkserve::memory
