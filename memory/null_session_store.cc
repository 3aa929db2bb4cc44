#include "memory/null_session_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {

absl::StatusOr<CheckpointResult> NullSessionStore::Put(const SessionState& state) {
  SINKSERVE_RETURN_IF_ERROR(ValidateSessionId(state.id));
  absl::MutexLock lock(&mu_);
  SessionInfo& info = sessions_[state.id];
  const uint64_t version = info.version + 1;
  info = SessionInfo::Of(state);
  info.version = version;
  CheckpointResult result;
  result.version = version;
  result.full = true;
  return result;
}

absl::StatusOr<CheckpointResult> NullSessionStore::Append(std::string_view id,
                                                          uint64_t base_version,
                                                          const SessionDelta& delta) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("append to session ", std::string(id), ": no such session"));
  }
  SessionInfo& info = it->second;
  if (info.version != base_version) {
    return absl::AbortedError(absl::StrCat("append to session ", std::string(id),
                                           ": made against version ", base_version,
                                           ", the session is at ", info.version));
  }
  info.version = base_version + 1;
  info.tokens_seen = delta.tokens_seen;
  info.rounds = delta.rounds;
  info.turns = delta.turns;
  info.history_length = delta.history_length;
  info.updated_at = delta.updated_at;
  info.cells +=
      static_cast<int64_t>(delta.added.size()) - static_cast<int64_t>(delta.evicted.size());
  ++info.deltas;
  CheckpointResult result;
  result.version = info.version;
  return result;
}

absl::StatusOr<LoadedSession> NullSessionStore::Load(std::string_view id, std::string_view) const {
  return absl::NotFoundError(absl::StrCat("no session ", std::string(id),
                                          " to load: the store is `none` (nothing is kept)"));
}

absl::StatusOr<bool> NullSessionStore::Exists(std::string_view id) const {
  absl::MutexLock lock(&mu_);
  return sessions_.find(id) != sessions_.end();
}

absl::StatusOr<SessionInfo> NullSessionStore::Info(std::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end())
    return absl::NotFoundError(absl::StrCat("no session ", std::string(id)));
  return it->second;
}

absl::StatusOr<ListPage> NullSessionStore::List(const ListOptions& options) const {
  absl::MutexLock lock(&mu_);
  ListPage page;
  const int max = std::clamp(options.max_sessions, 1, 10000);
  for (auto it = sessions_.upper_bound(options.start_after); it != sessions_.end(); ++it) {
    if (static_cast<int>(page.sessions.size()) == max) {
      page.next_start_after = page.sessions.back().id;
      break;
    }
    page.sessions.push_back(it->second);
  }
  return page;
}

absl::Status NullSessionStore::Delete(std::string_view id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end())
    return absl::NotFoundError(absl::StrCat("no session ", std::string(id)));
  sessions_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<VerifyReport> NullSessionStore::Verify() const {
  absl::MutexLock lock(&mu_);
  VerifyReport report;
  report.sessions_checked = static_cast<int64_t>(sessions_.size());
  return report;
}

}  // namespace sinkserve::memory
