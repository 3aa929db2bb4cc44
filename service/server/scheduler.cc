#include "service/server/scheduler.h"

#include <chrono>
#include <utility>

namespace sinkserve::service {

Scheduler::Scheduler(engine::Backend* backend, const SchedulerOptions& options)
    : backend_(backend), options_(options) {
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_) {
      tasks_.push_back(std::move(task));
      cv_.notify_one();
      return;
    }
  }
  task();
}

void Scheduler::Wake() {
  std::lock_guard<std::mutex> lock(mu_);
  wake_ = true;
  cv_.notify_one();
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void Scheduler::AddTurn(std::unique_ptr<ScheduledTurn> turn) {
  if (options_.admit && (!waiting_.empty() || !options_.admit())) {
    waiting_.push_back({std::move(turn), std::chrono::steady_clock::now()});
    return;
  }
  turns_.push_back(std::move(turn));
}

void Scheduler::Admit() {
  while (!waiting_.empty() && options_.admit()) {
    if (options_.metrics != nullptr) {
      options_.metrics->ObserveAdmissionWait(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - waiting_.front().since)
              .count());
    }
    turns_.push_back(std::move(waiting_.front().turn));
    waiting_.pop_front();
  }
}

void Scheduler::CancelAll() { cancel_all_ = true; }

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void Scheduler::Loop() {
  while (true) {
    std::deque<std::function<void()>> tasks;
    bool stop = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (tasks_.empty() && !wake_ && !stop_ && turns_.empty()) {
        auto woken = [this] { return !tasks_.empty() || wake_ || stop_; };
        // Waiting turns are admitted on a Wake; poll as a safety net.
        if (waiting_.empty()) {
          cv_.wait(lock, woken);
        } else {
          cv_.wait_for(lock, std::chrono::milliseconds(10), woken);
        }
      }
      tasks.swap(tasks_);
      wake_ = false;
      stop = stop_;
    }
    for (auto& task : tasks) task();
    if (stop) break;
    ReapCancelled();
    Admit();
    const bool stepped = Step();
    AfterStep();
    if (!stepped && tasks.empty()) {
      // Every turn waits for its reader (or none runs): sleep until a Wake,
      // a task or, as a safety net, a short timeout.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(10),
                   [this] { return !tasks_.empty() || wake_ || stop_; });
    }
  }
  cancel_all_ = true;
  ReapCancelled();
  AfterStep();
  // Tasks posted until now run here; later ones run on their caller's thread.
  while (true) {
    std::deque<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (tasks_.empty()) {
        stopped_ = true;
        break;
      }
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();
  }
}

bool Scheduler::ReapCancelled() {
  std::vector<bool> ended(turns_.size(), false);
  bool any = false;
  for (size_t i = 0; i < turns_.size(); ++i) {
    if (cancel_all_ || turns_[i]->CancelRequested()) {
      turns_[i]->driver().Cancel();
      turns_[i]->OnEnd(absl::OkStatus());
      ended[i] = true;
      any = true;
    }
  }
  if (any) Remove(&ended);
  // Waiting turns never ran a step: cancelling one just ends it.
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (cancel_all_ || it->turn->CancelRequested()) {
      it->turn->driver().Cancel();
      it->turn->OnEnd(absl::OkStatus());
      it = waiting_.erase(it);
      any = true;
    } else {
      ++it;
    }
  }
  cancel_all_ = false;
  return any;
}

void Scheduler::AfterStep() {
  if (options_.after_step) options_.after_step();
}

void Scheduler::Remove(std::vector<bool>* ended) {
  size_t out = 0;
  for (size_t i = 0; i < turns_.size(); ++i) {
    if (!(*ended)[i]) turns_[out++] = std::move(turns_[i]);
  }
  turns_.resize(out);
  if (rotation_ >= turns_.size()) rotation_ = 0;
}

bool Scheduler::Step() {
  const size_t n = turns_.size();
  if (n == 0) return false;
  std::vector<bool> ended(n, false);
  steps_.clear();
  batch_.clear();
  for (size_t k = 0; k < n && static_cast<int>(batch_.size()) < options_.max_batch; ++k) {
    const size_t i = (rotation_ + k) % n;
    ScheduledTurn& turn = *turns_[i];
    if (!turn.HasRoom()) continue;
    absl::StatusOr<engine::SequenceStep> step = turn.driver().Prepare();
    if (!step.ok()) {
      turn.OnEnd(step.status());
      ended[i] = true;
      continue;
    }
    steps_.push_back(*step);
    batch_.push_back(i);
  }
  rotation_ = (rotation_ + 1) % n;
  if (!batch_.empty()) {
    absl::Status forward = backend_->Forward(steps_, &result_);
    for (size_t b = 0; b < batch_.size(); ++b) {
      ScheduledTurn& turn = *turns_[batch_[b]];
      absl::Status s = forward;
      if (!forward.ok()) {
        turn.driver().Abort();
      } else {
        s = turn.driver().Complete(result_.logits[b]);
      }
      if (!s.ok()) {
        turn.OnEnd(s);
        ended[batch_[b]] = true;
      } else if (turn.driver().done()) {
        turn.OnEnd(absl::OkStatus());
        ended[batch_[b]] = true;
      } else {
        turn.OnStep();
      }
    }
    if (options_.metrics != nullptr) options_.metrics->ObserveBatch(batch_.size());
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.steps;
    stats_.turns_stepped += batch_.size();
  }
  const bool stepped = !batch_.empty();
  Remove(&ended);
  return stepped;
}

}  // namespace sinkserve::service
