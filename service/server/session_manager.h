// SessionManager: the sessions a server holds in memory, backed by the store.
//
// Sessions are loaded from the store when a stream attaches (or created when
// asked), kept in memory while in use, and dropped from memory in
// least-recently-used order beyond `max_sessions_in_memory`, after a final
// checkpoint. At most one stream is attached to a session at a time.
//
// Not thread-safe: it lives on the scheduler thread, which owns the backend
// that sessions allocate K/V storage on.
#ifndef SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_
#define SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/session.h"
#include "memory/session_store.h"
#include "service/metrics.h"
#include "service/server/serving_model.h"
#include "sinkserve/v1/sinkserve.pb.h"

namespace sinkserve::service {

struct SessionManagerOptions {
  // Sessions kept in memory; detached ones beyond it are checkpointed and
  // dropped, least recently used first. Attaching when every session in
  // memory is attached is RESOURCE_EXHAUSTED. Default: 256.
  int max_sessions_in_memory = 256;
  // Sessions the store may hold; creating one more is RESOURCE_EXHAUSTED.
  // 0 = no limit. Default: 0.
  int64_t max_sessions = 0;
  // Used when a SessionConfig leaves the policy unspecified. Default: full.
  memory::PolicyConfig default_policy;
  // Sampling of sessions created without settings. Default: SamplerOptions{}.
  engine::SamplerOptions default_sampling;
  // Seed each session that does not choose one at random (kept with the
  // session, so a restored session still continues exactly) instead of with
  // default_sampling.seed. Default: false.
  bool random_seed = false;
  // Prefill chunk of every session. Default: 512.
  int max_step_tokens = 512;
  // KV slots of a `full` session; 0 = the model's context length. Default: 0.
  int full_capacity = 0;
  // Most KV cells a session's policy may keep (its K/V memory is allocated up
  // front); a bigger budget is RESOURCE_EXHAUSTED. Default: 65536.
  int max_session_cells = 65536;
};

// `base` with the fields `params` sets; INVALID_ARGUMENT for values out of range.
absl::StatusOr<engine::SamplerOptions> ApplySampling(const engine::SamplerOptions& base,
                                                     const v1::SamplingParams& params);

struct AttachResult {
  engine::Session* session = nullptr;
  bool restored = false;  // loaded from the store
  bool created = false;
  std::vector<std::string> warnings;
};

class SessionManager {
 public:
  // Counts the sessions in the store (for max_sessions).
  static absl::StatusOr<std::unique_ptr<SessionManager>> Create(
      ServingModel* model, memory::SessionStore* store, Metrics* metrics,
      const SessionManagerOptions& options);

  // The session, attached to the caller. NOT_FOUND (unknown and not
  // create_if_missing), FAILED_PRECONDITION (attached elsewhere; stored under
  // another model), DATA_LOSS (corrupt), INVALID_ARGUMENT (bad id or config),
  // RESOURCE_EXHAUSTED (limits).
  absl::StatusOr<AttachResult> Attach(const std::string& id, bool create_if_missing,
                                      const v1::SessionConfig& config);
  void Detach(const std::string& id);

  // A new session, checkpointed at once (not attached). ALREADY_EXISTS if it
  // exists.
  absl::StatusOr<v1::SessionInfo> CreateDetached(const std::string& id,
                                                 const v1::SessionConfig& config);
  absl::StatusOr<v1::SessionInfo> Info(const std::string& id) const;
  absl::StatusOr<v1::ListSessionsResponse> List(const v1::ListSessionsRequest& request) const;
  // FAILED_PRECONDITION while attached.
  absl::Status Delete(const std::string& id);

  // Checkpoints the session if dirty; metrics recorded.
  absl::Status Checkpoint(engine::Session* session);
  // Checkpoints every dirty session in memory; the first error is returned
  // after trying all.
  absl::Status CheckpointAll();

  // The proto view of a session in memory.
  v1::SessionInfo InfoOf(const engine::Session& session) const;
  // The stored chat template of a session ("raw", ...).
  absl::StatusOr<ChatTemplate> TemplateOf(const engine::Session& session) const;

  int sessions_in_memory() const { return static_cast<int>(sessions_.size()); }

 private:
  struct Entry {
    std::unique_ptr<engine::Session> session;
    bool attached = false;
    std::list<std::string>::iterator lru;  // valid while detached
  };

  SessionManager(ServingModel* model, memory::SessionStore* store, Metrics* metrics,
                 const SessionManagerOptions& options)
      : model_(model), store_(store), metrics_(metrics), options_(options) {}

  absl::StatusOr<engine::SessionConfig> EngineConfig(const v1::SessionConfig& config,
                                                     std::vector<std::string>* warnings) const;
  absl::StatusOr<std::unique_ptr<engine::Session>> NewSession(const std::string& id,
                                                              const v1::SessionConfig& config,
                                                              std::vector<std::string>* warnings);
  // Makes room for one more session in memory.
  absl::Status MakeRoom();
  void Insert(std::unique_ptr<engine::Session> session, bool attached);
  void UpdateGauges() const;

  ServingModel* model_;
  memory::SessionStore* store_;
  Metrics* metrics_;  // may be null
  SessionManagerOptions options_;
  std::map<std::string, Entry> sessions_;
  std::list<std::string> lru_;  // detached sessions, least recently used first
  int64_t stored_sessions_ = 0;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_
