// NullSessionStore: a SessionStore that keeps nothing durable. Checkpoints
// are counted and acknowledged at once; sessions live only in the server's
// memory and are gone when they leave it (idle, memory limit, restart).
//
// For benchmarks (the decoder with no storage at all, `serve --store none`)
// and throwaway deployments that want no disk. It keeps each session's
// metadata (no K/V rows) so versions chain, and Exists/Info/List answer.
#ifndef SINKSERVE_MEMORY_NULL_SESSION_STORE_H_
#define SINKSERVE_MEMORY_NULL_SESSION_STORE_H_

#include <map>
#include <string>
#include <string_view>

#include "absl/synchronization/mutex.h"
#include "memory/session_store.h"

namespace sinkserve::memory {

class NullSessionStore : public SessionStore {
 public:
  absl::StatusOr<CheckpointResult> Put(const SessionState& state) override;
  absl::StatusOr<CheckpointResult> Append(std::string_view id, uint64_t base_version,
                                          const SessionDelta& delta) override;
  // NOT_FOUND: nothing is kept to load.
  absl::StatusOr<LoadedSession> Load(std::string_view id,
                                     std::string_view model_fingerprint) const override;
  absl::StatusOr<bool> Exists(std::string_view id) const override;
  absl::StatusOr<SessionInfo> Info(std::string_view id) const override;
  absl::StatusOr<ListPage> List(const ListOptions& options) const override;
  absl::Status Delete(std::string_view id) override;
  absl::StatusOr<VerifyReport> Verify() const override;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, SessionInfo, std::less<>> sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_NULL_SESSION_STORE_H_
