// Scheduler: the one thread that owns the Backend, with continuous batching.
//
// Each step advances every runnable turn by one forward step (one token, or
// one prefill chunk) in ONE Backend::Forward over all of them. A turn joins
// the batch the step after it arrives and leaves it the step it ends, so
// sessions never wait for each other's turns to finish. Turns whose reader
// lags (a full output buffer) sit out until it drains: backpressure instead of
// unbounded memory. Cancelled turns end before the next step, freeing their
// slot at once.
//
// Everything that touches the backend or the sessions runs on this thread:
// steps, and the tasks posted to it (attach, create, checkpoint, admin RPCs),
// which run between steps.
#ifndef SINKSERVE_SERVICE_SERVER_SCHEDULER_H_
#define SINKSERVE_SERVICE_SERVER_SCHEDULER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend.h"
#include "engine/generator.h"
#include "service/metrics.h"

namespace sinkserve::service {

// A turn the scheduler steps. Called on the scheduler thread only.
class ScheduledTurn {
 public:
  virtual ~ScheduledTurn() = default;
  // Started (TurnDriver::Start done) and not done.
  virtual engine::TurnDriver& driver() = 0;
  // False while the turn's output buffer is full: skipped this step.
  virtual bool HasRoom() const = 0;
  // The client cancelled the turn or went away: it ends before the next step.
  virtual bool CancelRequested() const = 0;
  // After a step that did not end the turn (flush its output).
  virtual void OnStep() = 0;
  // The turn ended (status OK: the driver is done, cancelled ones included)
  // or failed. The last call; the scheduler destroys the turn after it.
  virtual void OnEnd(const absl::Status& status) = 0;
};

struct SchedulerOptions {
  // Most turns in one forward pass; the others wait, taken in rotation.
  // Default: 256.
  int max_batch = 256;
  // Runs on the scheduler thread after each step and after cancelled turns
  // are ended, once for all the turns that ended there (the session
  // manager's group commit). Default: none.
  std::function<void()> after_step;
  // Each step's batch size goes here. Default: null.
  Metrics* metrics = nullptr;
  // Whether a new turn may join now (false while the checkpoint writers are
  // behind); turns that may not wait, in arrival order, and the running ones
  // go on. Call Wake() when it may have become true. Default: always.
  std::function<bool()> admit;
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t turns_stepped = 0;  // summed over steps: mean batch = this / steps
};

class Scheduler {
 public:
  // Starts the thread. `backend` must outlive the scheduler.
  Scheduler(engine::Backend* backend, const SchedulerOptions& options);
  // Stop().
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. Runs `task` on the scheduler thread before the next step
  // (tasks run in order). After Stop, tasks run on the caller's thread.
  void Post(std::function<void()> task);
  // Thread-safe. Something a waiting turn waits for happened (buffer space,
  // a cancel).
  void Wake();
  // Ends every turn as cancelled, runs the tasks left and joins the thread.
  void Stop();

  // Scheduler thread only. The turn runs from the next step, or waits for
  // admission (SchedulerOptions::admit).
  void AddTurn(std::unique_ptr<ScheduledTurn> turn);
  // Running and waiting turns.
  int active_turns() const { return static_cast<int>(turns_.size() + waiting_.size()); }
  // Asks every turn to end (drain past its grace period).
  void CancelAll();
  SchedulerStats stats() const;

 private:
  void Loop();
  // One batched step; false when no turn could run.
  bool Step();
  // Ends turns that asked to; true if any.
  bool ReapCancelled();
  // Moves waiting turns into the batch while admit() allows.
  void Admit();
  void AfterStep();
  void Remove(std::vector<bool>* ended);

  engine::Backend* backend_;
  const SchedulerOptions options_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool wake_ = false;                        // guarded by mu_
  bool stop_ = false;                        // guarded by mu_
  bool stopped_ = false;                     // guarded by mu_: thread gone

  // Scheduler thread only.
  std::vector<std::unique_ptr<ScheduledTurn>> turns_;
  struct Waiting {
    std::unique_ptr<ScheduledTurn> turn;
    std::chrono::steady_clock::time_point since;
  };
  std::deque<Waiting> waiting_;  // not yet admitted, in arrival order
  size_t rotation_ = 0;
  bool cancel_all_ = false;
  engine::StepResult result_;
  std::vector<engine::SequenceStep> steps_;
  std::vector<size_t> batch_;  // indices into turns_
  mutable std::mutex stats_mu_;
  SchedulerStats stats_;

  std::thread thread_;
};

}  // namespace sinkserve::service

#endif  // SINKSERVE_SERVICE_SERVER_SCHEDULER_H_
