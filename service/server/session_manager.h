// SessionManager: the sessions a server holds in memory, backed by the store.
//
// Sessions are loaded from the store when a stream attaches (or created when
// asked) and kept in memory while in use. Detached sessions leave memory,
// after a final checkpoint, when they have not been used for `idle_timeout`
// or, least recently used first, beyond `max_sessions_in_memory` sessions or
// `max_session_memory_bytes`; the next stream that attaches one loads it
// back. Attached sessions never leave. At most one stream is attached to a
// session at a time.
//
// Not thread-safe: it lives on the scheduler thread, which owns the backend
// that sessions allocate K/V storage on. Turns reach sessions only while
// their stream is attached, and attaching, detaching and dropping all run on
// that thread, so a session is never dropped under a stream.
#ifndef SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_
#define SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/session.h"
#include "memory/checkpoint_pipeline.h"
#include "memory/session_store.h"
#include "service/metrics.h"
#include "service/server/serving_model.h"
#include "service/server/session_config.h"
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
  // Stored sessions a tenant may hold (its id scope: security::ScopedId),
  // 0 = no limit; counted like max_sessions. Default: none.
  std::function<int64_t(std::string_view tenant)> tenant_session_limit;
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
  // Checks a new session's resolved configuration before it is created and
  // stored (the server refuses a pinned system prompt that leaves too small
  // a window). Default: none.
  std::function<absl::Status(const engine::SessionConfig&)> check_new_session;
  // A detached session not used for this long is checkpointed and dropped
  // from memory; zero = never. Checked whenever the manager is called (see
  // Sweep), so on a server without any traffic it lingers until the next
  // call. Default: 10 minutes.
  absl::Duration idle_timeout = absl::Minutes(10);
  // Bytes the sessions in memory may hold in K/V rows and cell metadata
  // (SessionMemoryBytes); beyond it detached sessions are checkpointed and
  // dropped, least recently used first. Attached sessions stay even past it
  // (max_sessions_in_memory bounds those), so it is a target, not a cap.
  // 0 = no limit. Default: 0.
  int64_t max_session_memory_bytes = 0;
  // The clock idle_timeout is measured with. Default: absl::Now.
  std::function<absl::Time()> clock = absl::Now;
  // Make every checkpoint durable (SessionStore::Sync) before it counts as
  // done: open the store without per-write sync then, and the checkpoint
  // writers sync once for each group of writes they take together (group
  // commit). Default: true.
  bool sync = true;
  // Threads writing checkpoints (memory::CheckpointPipeline); turns never
  // wait for them, only their TurnEnd does. Default: 2.
  int checkpoint_threads = 2;
  // Staging memory of captured checkpoints not yet written; beyond it
  // AdmitTurns() is false (new turns wait, running ones go on). Default: 1 GiB.
  int64_t checkpoint_buffer_bytes = int64_t{1} << 30;
  // Runs on a checkpoint writer when the staging memory is below
  // checkpoint_buffer_bytes again (wake whoever waits on AdmitTurns).
  // Default: none.
  std::function<void()> on_checkpoint_room;
  // Runs (scheduler thread) when a session enters memory (true) and when it
  // leaves it (false): what SessionOwnership holds leases for. Default: none.
  std::function<void(const std::string& id, bool resident)> on_resident;
  // Runs on a checkpoint writer when the store refused a checkpoint because
  // another server owns the session now (memory::IsFenced): the caller
  // evicts it. Default: none.
  std::function<void(const std::string& id)> on_fenced;
};

// What TrySurrender found.
enum class Surrender {
  kGone,      // not in memory (any more): its checkpoints are durable
  kPending,   // detached, its last checkpoint is being written: ask again
  kAttached,  // a stream uses it: end that stream first
};

// Memory a session in memory holds: its K/V rows (capacity x layers x K and V
// x kv_dim in the storage dtype, on the backend: host RAM or device memory)
// plus its cell metadata.
int64_t SessionMemoryBytes(const engine::Session& session);

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

  // Checkpoints the session if dirty and waits until it is durable; metrics
  // recorded. Then sweeps. For rare paths: it blocks the caller.
  absl::Status Checkpoint(engine::Session* session);
  // The end of a turn: captures the session's checkpoint (its K/V rows may
  // still be copying) and hands it to the checkpoint writers; `done` runs on
  // a writer thread once it is durable, with the outcome. Never waits for
  // storage: the next step runs at once. A turn must not tell its client it
  // is over before `done`.
  void CheckpointTurn(engine::Session* session, std::function<void(const absl::Status&)> done);
  // False while the checkpoint writers hold more than
  // checkpoint_buffer_bytes: new turns should wait (backpressure).
  bool AdmitTurns() const;
  // Blocks until every checkpoint captured so far is durable (or failed).
  void WaitForCheckpoints();
  // What the checkpoint writers hold and have done.
  memory::CheckpointPipelineStats checkpoint_stats() const;
  // Checkpoints every dirty session in memory and waits until all are
  // durable; the first error is returned after trying all.
  absl::Status CheckpointAll();

  // The proto view of a session in memory.
  v1::SessionInfo InfoOf(const engine::Session& session) const;
  // The stored chat template of a session ("raw", ...).
  absl::StatusOr<ChatTemplate> TemplateOf(const engine::Session& session) const;

  // A handoff: drops the session from memory once detached and durable.
  Surrender TrySurrender(const std::string& id);
  // Another server owns the session now (its lease was lost, a write was
  // fenced): its copy here is stale and is dropped without writing it —
  // at once if detached, else when its stream detaches. It is never handed
  // to a stream again.
  void Evict(const std::string& id);

  // Drops detached sessions idle for idle_timeout, then detached ones beyond
  // max_session_memory_bytes, least recently used first. A session leaves
  // memory only once its last checkpoint is durable: a dirty one is
  // checkpointed (without waiting) and dropped by a later sweep. Every call
  // that changes what is attached or stored (Attach, Detach, CreateDetached,
  // Delete, Checkpoint) and every scheduler step ends with it; a timer may
  // call it too. A session whose checkpoint failed stays (dropping it would
  // lose turns) and is checkpointed whole again.
  absl::Status Sweep();

  int sessions_in_memory() const { return static_cast<int>(sessions_.size()); }
  // SessionMemoryBytes summed over the sessions in memory.
  int64_t memory_bytes() const { return memory_bytes_; }

 private:
  struct Entry {
    std::unique_ptr<engine::Session> session;
    bool attached = false;
    std::list<std::string>::iterator lru;  // valid while detached
    absl::Time last_used;                   // when it was last detached
    int64_t bytes = 0;                      // SessionMemoryBytes
    bool evicted = false;                   // stale: dropped unwritten
  };

  SessionManager(ServingModel* model, memory::SessionStore* store, Metrics* metrics,
                 const SessionManagerOptions& options)
      : model_(model), store_(store), metrics_(metrics), options_(options) {}

  absl::StatusOr<engine::SessionConfig> EngineConfig(const v1::SessionConfig& config,
                                                     std::vector<std::string>* warnings) const;
  absl::StatusOr<std::unique_ptr<engine::Session>> NewSession(const std::string& id,
                                                              const v1::SessionConfig& config,
                                                              std::vector<std::string>* warnings);
  // Makes room for one more session in memory; may wait for checkpoints.
  absl::Status MakeRoom();
  // Drops the detached session at `it` from memory once its checkpoints are
  // durable, waiting for them; on a failed checkpoint it stays.
  absl::Status Drop(std::map<std::string, Entry>::iterator it);
  // Drop without waiting: false (and a checkpoint under way) when the
  // session's last checkpoint is not durable yet.
  bool TryDrop(std::map<std::string, Entry>::iterator it);
  // Sweep's drops.
  absl::Status DropIdle();
  // Sweep for callers whose own result a failing sweep must not change: the
  // error is logged.
  void SweepAndLog();
  // Captures the session's checkpoint (if dirty, or whole after a failed
  // write) and submits it; `done` as in CheckpointTurn.
  void SubmitCheckpoint(engine::Session* session, std::function<void(const absl::Status&)> done);
  // SubmitCheckpoint, then waits until it is durable.
  absl::Status CheckpointSession(engine::Session* session);
  void Insert(std::unique_ptr<engine::Session> session, bool attached);
  // Removes the session at `it` from memory (no checkpoint).
  void Erase(std::map<std::string, Entry>::iterator it);
  void UpdateGauges() const;

  ServingModel* model_;
  memory::SessionStore* store_;
  Metrics* metrics_;  // may be null
  SessionManagerOptions options_;
  std::map<std::string, Entry> sessions_;
  std::list<std::string> lru_;  // detached sessions, least recently used first
  std::set<std::string> evicted_;  // evicted, still in memory
  int64_t stored_sessions_ = 0;
  // The same by tenant (the scope of each stored id).
  std::map<std::string, int64_t, std::less<>> tenant_sessions_;
  int64_t memory_bytes_ = 0;  // SessionMemoryBytes summed over sessions_
  // Last: destroyed first, writing what is queued while the rest still lives.
  std::unique_ptr<memory::CheckpointPipeline> pipeline_;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SESSION_MANAGER_H_
