// SessionLeases: which server of several sharing one store owns a session.
//
// At most one server serves a session: the owner holds a lease on it, renewed
// while the session is in its memory, and an epoch that rises with every
// change of owner. The store refuses every write made at an older epoch (see
// RadosSessionStore's fencing), so a server that lost its lease — paused,
// partitioned, slow — can never write the session again: safety rests on the
// epoch, the lease only decides who may raise it without stealing from a
// live owner.
//
// Taking a session another server holds is a handoff: the current owner is
// asked (HandoffFn) to checkpoint and release it; an owner that is gone has
// its lease broken at once; one that does not answer is waited out.
#ifndef SINKSERVE_MEMORY_SESSION_LEASES_H_
#define SINKSERVE_MEMORY_SESSION_LEASES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sinkserve::memory {

// How the owner of a session answered a request to release it.
enum class HandoffAnswer {
  kReleased,   // it checkpointed and released the session (or did not hold it)
  kOwnerGone,  // nothing answers at its address, or another process does
  kNoAnswer,   // no answer in time (paused, partitioned, overloaded)
};

// Asks the server at `owner_address`, holding the lease as `owner_cookie`,
// to release session `id` within `timeout`. Called without locks held.
using HandoffFn = std::function<HandoffAnswer(
    const std::string& owner_address, const std::string& owner_cookie,
    const std::string& id, absl::Duration timeout)>;

// Why Acquire got the session.
enum class AcquireCause {
  kHeld,       // this server held it already
  kFree,       // no one held it
  kHandedOff,  // its owner released it when asked
  kOwnerGone,  // its owner was gone: the lease was broken
  kExpired,    // its owner did not answer: the lease was waited out
};
const char* AcquireCauseName(AcquireCause cause);

struct Acquired {
  uint64_t epoch = 0;  // this server's epoch for the session
  AcquireCause cause = AcquireCause::kFree;
  absl::Duration waited;       // time spent in Acquire
  std::string previous_owner;  // address of the owner it was taken from
};

struct LeaseStats {
  int64_t owned = 0;  // sessions held now
  uint64_t acquired[5] = {};  // by AcquireCause
  uint64_t released = 0;
  uint64_t renewals = 0;
  uint64_t renewal_errors = 0;  // the store did not answer a renewal
  uint64_t lost = 0;            // leases found taken or expired
};

class SessionLeases {
 public:
  virtual ~SessionLeases() = default;

  // Owns `id` (which need not exist yet) from now on, taking it over from
  // its current owner if needed; blocks up to about the lease duration plus
  // the handoff timeout. UNAVAILABLE if the store does not answer or the
  // owner kept the session; INVALID_ARGUMENT for a bad id.
  virtual absl::StatusOr<Acquired> Acquire(std::string_view id) = 0;
  // Gives `id` up (no-op if not held). Its last checkpoint must be durable.
  virtual absl::Status Release(std::string_view id) = 0;
  // Whether this server holds `id` and has not found its lease lost.
  virtual bool Owns(std::string_view id) const = 0;
  // This server's lease identity, which a handoff request names.
  virtual const std::string& cookie() const = 0;
  virtual LeaseStats stats() const = 0;
};

// A write refused because another server owns the session now (or this one
// never did). FAILED_PRECONDITION, marked so IsFenced recognizes it.
absl::Status FencedError(std::string_view message);
bool IsFenced(const absl::Status& status);

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_SESSION_LEASES_H_
