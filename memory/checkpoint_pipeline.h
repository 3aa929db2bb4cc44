// CheckpointPipeline: session checkpoints written by writer threads, so the
// thread that decodes never waits for storage.
//
// The decoder captures a checkpoint (metadata plus the K/V rows of the cells
// it adds, possibly still being copied off the accelerator: PendingRows) and
// Submits it; writer threads turn it into a store write, make it durable and
// call its `done`. Per session, checkpoints are written strictly in the order
// they were submitted, each delta against the version the one before it
// produced, so a session's next turn may be captured while its previous one
// is still being written, and a crash at any point leaves the stored chain
// at some submitted checkpoint, never between. Different sessions' writes go
// in parallel (`writer_threads`), and the writes one thread takes together
// share one Sync (group commit).
//
// A write that fails breaks the session's chain: its later deltas fail too
// (ABORTED) until a full state is submitted (NeedsFull tells the caller). The
// staging memory of queued checkpoints is bounded only by the caller:
// OverBudget() says when the queue holds more than `buffer_bytes`, and the
// server then admits no new turns (running ones still end and submit).
//
// Thread-safe. Stores used with it must be thread-safe (SessionStore is).
#ifndef SINKSERVE_MEMORY_CHECKPOINT_PIPELINE_H_
#define SINKSERVE_MEMORY_CHECKPOINT_PIPELINE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "memory/pending_rows.h"
#include "memory/session_state.h"
#include "memory/session_store.h"

namespace sinkserve::memory {

// One captured checkpoint of one session.
struct PendingCheckpoint {
  std::string id;
  // The version the session was stored at when the pipeline first sees it
  // (a Load's, or 0 for a session never stored). Later submissions of the
  // same session chain on the pipeline's own record. Default: 0.
  uint64_t base_version = 0;
  // At most one: the whole state (Put) or a delta against the previous
  // checkpoint (Append). Neither: nothing changed; `done` runs once every
  // earlier checkpoint of the session is durable (a barrier).
  std::optional<SessionState> full;
  std::optional<SessionDelta> delta;
  // When set, the rows of `full` (state.kv) or `delta` (delta.kv) are still
  // in flight: the writer fills them in before writing.
  std::unique_ptr<PendingRows> rows;
  // Staging bytes this checkpoint holds (rows included), for OverBudget.
  int64_t bytes = 0;
};

struct CheckpointOutcome {
  // The store's answer (version, bytes, latency of the write itself).
  CheckpointResult result;
  // From Submit to durable (queueing, rows, write and sync).
  absl::Duration queued_to_durable;
  bool wrote = false;  // false for a barrier
};

using CheckpointDone = std::function<void(const absl::StatusOr<CheckpointOutcome>&)>;

struct CheckpointPipelineOptions {
  // Threads writing checkpoints; sessions are spread over them. Default: 2.
  int writer_threads = 2;
  // Most checkpoints one writer takes (and syncs) together. Default: 64.
  int max_group = 64;
  // Call SessionStore::Sync after each group: every `done` then means
  // durable (power loss included); else it means written. Default: true.
  bool sync = true;
  // OverBudget() once queued checkpoints hold more than this. Default: 1 GiB.
  int64_t buffer_bytes = int64_t{1} << 30;
  // Called (from a writer thread) whenever queued bytes drop back to or
  // below buffer_bytes after being over it, so a waiting admitter can look
  // again. Default: none.
  std::function<void()> on_room;
};

struct CheckpointPipelineStats {
  int64_t queued = 0;        // submitted, not yet done
  int64_t queued_bytes = 0;  // their staging bytes
  int64_t written = 0;       // checkpoints written since start
  int64_t written_bytes = 0; // bytes handed to the store since start
  int64_t failed = 0;
  int64_t syncs = 0;
};

class CheckpointPipeline {
 public:
  // Starts the writers. `store` must outlive the pipeline.
  CheckpointPipeline(SessionStore* store, CheckpointPipelineOptions options);
  // Writes everything submitted, then stops the writers.
  ~CheckpointPipeline();
  CheckpointPipeline(const CheckpointPipeline&) = delete;
  CheckpointPipeline& operator=(const CheckpointPipeline&) = delete;

  // Queues `checkpoint`; `done` runs on a writer thread once it is durable
  // (or failed). Never blocks on storage.
  void Submit(PendingCheckpoint checkpoint, CheckpointDone done);

  // Blocks until every checkpoint of `id` submitted so far is done.
  void Flush(std::string_view id);
  // Blocks until every checkpoint submitted so far is done.
  void FlushAll();

  // Checkpoints of `id` submitted and not yet done.
  bool Busy(std::string_view id) const;
  // The session's chain is broken (a write failed): its next checkpoint
  // must be a full state.
  bool NeedsFull(std::string_view id) const;
  // Forgets the session's chain (it left memory or was deleted). Flush first.
  void Forget(std::string_view id);

  bool OverBudget() const;
  CheckpointPipelineStats stats() const;

 private:
  struct Job {
    PendingCheckpoint checkpoint;
    CheckpointDone done;
    absl::Time submitted;
  };
  struct Chain {
    std::deque<Job> jobs;
    bool in_flight = false;     // its head is being written
    bool in_ready = false;      // listed in ready_
    uint64_t version = 0;       // the version its last write produced
    absl::Status broken;        // the last failure, until a full state is written
  };
  struct Taken {
    std::string id;
    Job job;
    enum class Kind { kBarrier, kFull, kDelta } kind = Kind::kBarrier;
    uint64_t base_version = 0;
    absl::Status broken;  // the chain's, when taken
    absl::StatusOr<CheckpointOutcome> outcome;
  };

  void WriterLoop();
  // Pops ready chains' heads (mu_ held).
  std::vector<Taken> TakeGroup();
  void Write(Taken* taken);

  SessionStore* store_;
  const CheckpointPipelineOptions options_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a chain became ready, or stop
  std::condition_variable done_cv_;  // a job finished
  std::map<std::string, Chain, std::less<>> chains_;  // guarded by mu_
  std::deque<std::string> ready_;    // chains with a head to write, FIFO
  CheckpointPipelineStats stats_;    // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  std::vector<std::thread> writers_;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_CHECKPOINT_PIPELINE_H_
