#include "memory/checkpoint_pipeline.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace sinkserve::memory {

CheckpointPipeline::CheckpointPipeline(SessionStore* store, CheckpointPipelineOptions options)
    : store_(store), options_(std::move(options)) {
  const int n = std::max(1, options_.writer_threads);
  writers_.reserve(n);
  for (int i = 0; i < n; ++i) writers_.emplace_back([this] { WriterLoop(); });
}

CheckpointPipeline::~CheckpointPipeline() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    work_cv_.notify_all();
  }
  for (std::thread& t : writers_) t.join();
}

void CheckpointPipeline::Submit(PendingCheckpoint checkpoint, CheckpointDone done) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, created] = chains_.try_emplace(checkpoint.id);
  Chain& chain = it->second;
  if (created) chain.version = checkpoint.base_version;
  stats_.queued += 1;
  stats_.queued_bytes += checkpoint.bytes;
  chain.jobs.push_back(Job{std::move(checkpoint), std::move(done), absl::Now()});
  if (!chain.in_flight && !chain.in_ready) {
    chain.in_ready = true;
    ready_.push_back(it->first);
    work_cv_.notify_one();
  }
}

bool CheckpointPipeline::Busy(std::string_view id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chains_.find(id);
  return it != chains_.end() && (it->second.in_flight || !it->second.jobs.empty());
}

bool CheckpointPipeline::NeedsFull(std::string_view id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chains_.find(id);
  return it != chains_.end() && !it->second.broken.ok();
}

void CheckpointPipeline::Forget(std::string_view id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chains_.find(id);
  if (it != chains_.end() && !it->second.in_flight && it->second.jobs.empty()) {
    chains_.erase(it);
  }
}

void CheckpointPipeline::Flush(std::string_view id) {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] {
    auto it = chains_.find(id);
    return it == chains_.end() || (!it->second.in_flight && it->second.jobs.empty());
  });
}

void CheckpointPipeline::FlushAll() {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return stats_.queued == 0; });
}

bool CheckpointPipeline::OverBudget() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_.queued_bytes > options_.buffer_bytes;
}

CheckpointPipelineStats CheckpointPipeline::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::vector<CheckpointPipeline::Taken> CheckpointPipeline::TakeGroup() {
  // Leave ready chains for the other writers: they write (and sync) in
  // parallel, which the store's own group commit turns into fewer syncs.
  const size_t writers = writers_.size();
  const size_t share = (ready_.size() + writers - 1) / writers;
  const size_t n = std::min<size_t>(std::max<size_t>(share, 1),
                                    static_cast<size_t>(std::max(1, options_.max_group)));
  std::vector<Taken> group;
  while (group.size() < n && !ready_.empty()) {
    auto it = chains_.find(ready_.front());
    ready_.pop_front();
    Chain& chain = it->second;
    chain.in_ready = false;
    chain.in_flight = true;
    Taken taken;
    taken.id = it->first;
    taken.job = std::move(chain.jobs.front());
    chain.jobs.pop_front();
    taken.kind = taken.job.checkpoint.full.has_value()    ? Taken::Kind::kFull
                 : taken.job.checkpoint.delta.has_value() ? Taken::Kind::kDelta
                                                          : Taken::Kind::kBarrier;
    taken.base_version = chain.version;
    taken.broken = chain.broken;
    group.push_back(std::move(taken));
  }
  return group;
}

void CheckpointPipeline::Write(Taken* taken) {
  PendingCheckpoint& cp = taken->job.checkpoint;
  CheckpointOutcome outcome;
  if (taken->kind == Taken::Kind::kBarrier) {
    // A barrier: durable iff everything before it was.
    if (!taken->broken.ok()) {
      taken->outcome = taken->broken;
    } else {
      outcome.result.version = taken->base_version;
      taken->outcome = outcome;
    }
    return;
  }
  if (taken->kind == Taken::Kind::kDelta && !taken->broken.ok()) {
    taken->outcome = absl::AbortedError(absl::StrCat("checkpoint of session ", taken->id,
                                                     " not written: an earlier one failed (",
                                                     taken->broken.message(), ")"));
    return;
  }
  if (cp.rows != nullptr) {
    std::string* kv = cp.full.has_value() ? &cp.full->kv : &cp.delta->kv;
    if (absl::Status s = cp.rows->Wait(kv); !s.ok()) {
      taken->outcome = s;
      return;
    }
    cp.rows.reset();
  }
  absl::StatusOr<CheckpointResult> result =
      cp.full.has_value() ? store_->Put(*cp.full)
                          : store_->Append(taken->id, taken->base_version, *cp.delta);
  if (!result.ok()) {
    taken->outcome = result.status();
    return;
  }
  outcome.result = *result;
  outcome.wrote = true;
  taken->outcome = outcome;
  // The staged rows are no longer needed; free them before the sync.
  cp.full.reset();
  cp.delta.reset();
}

void CheckpointPipeline::WriterLoop() {
  while (true) {
    std::vector<Taken> group;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this] { return stop_ || !ready_.empty(); });
      if (ready_.empty()) return;  // stop_, and nothing left to write
      group = TakeGroup();
      if (!ready_.empty()) work_cv_.notify_one();
    }
    bool wrote = false;
    for (Taken& taken : group) {
      Write(&taken);
      wrote = wrote || (taken.outcome.ok() && taken.outcome->wrote);
    }
    absl::Status synced;
    if (options_.sync && wrote) synced = store_->Sync();
    const absl::Time now = absl::Now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (options_.sync && wrote) ++stats_.syncs;
      for (Taken& taken : group) {
        Chain& chain = chains_.find(taken.id)->second;
        if (taken.outcome.ok() && taken.outcome->wrote) {
          // The store holds it (a failed sync makes it not durable, not
          // absent), so the next delta chains on it.
          chain.version = taken.outcome->result.version;
          if (taken.kind == Taken::Kind::kFull) chain.broken = absl::OkStatus();
          ++stats_.written;
          stats_.written_bytes += static_cast<int64_t>(taken.outcome->result.bytes_written);
          if (!synced.ok()) taken.outcome = synced;
        } else if (!taken.outcome.ok()) {
          ++stats_.failed;
          if (taken.kind != Taken::Kind::kBarrier && chain.broken.ok()) {
            chain.broken = taken.outcome.status();
          }
        }
        if (taken.outcome.ok()) taken.outcome->queued_to_durable = now - taken.job.submitted;
      }
    }
    // Outside the lock (a callback may Submit); the chains stay in flight
    // until their callbacks ran, so a session's callbacks run in order and
    // Flush returns only after them.
    for (Taken& taken : group) {
      if (taken.job.done) taken.job.done(taken.outcome);
    }
    bool got_room = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const bool was_over = stats_.queued_bytes > options_.buffer_bytes;
      for (Taken& taken : group) {
        Chain& chain = chains_.find(taken.id)->second;
        chain.in_flight = false;
        --stats_.queued;
        stats_.queued_bytes -= taken.job.checkpoint.bytes;
        if (!chain.jobs.empty() && !chain.in_ready) {
          chain.in_ready = true;
          ready_.push_back(taken.id);
        }
      }
      got_room = was_over && stats_.queued_bytes <= options_.buffer_bytes;
      if (!ready_.empty()) work_cv_.notify_all();
      done_cv_.notify_all();
    }
    if (got_room && options_.on_room) options_.on_room();
  }
}

}  // namespace sinkserve::memory
