#include "engine/sequence.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {

double Surprisal(absl::Span<const float> logits, int32_t token) {
  float max = -INFINITY;
  for (float x : logits) max = std::max(max, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  return std::log(sum) + max - static_cast<double>(logits[token]);
}

absl::StatusOr<std::unique_ptr<Sequence>> Sequence::Create(Backend* backend,
                                                           const SequenceOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("sequence needs a backend");
  SINKSERVE_RETURN_IF_ERROR(options.policy.Validate());
  if (options.max_step_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_step_tokens must be >= 1, got ", options.max_step_tokens));
  }
  int64_t capacity = options.capacity;
  int max_step = options.max_step_tokens;
  if (capacity == 0) {
    if (options.policy.Budget().has_value()) {
      capacity = memory::KvCache::MinCapacity(options.policy, max_step);
    } else {
      capacity = backend->config().context_length;
      if (capacity <= 0) {
        return absl::InvalidArgumentError(
            "policy full needs a capacity: the model declares no context length");
      }
    }
  }
  if (!options.policy.Budget().has_value()) max_step = std::min<int64_t>(max_step, capacity);
  if (capacity > memory::kMaxPolicyCells) {
    return absl::InvalidArgumentError(absl::StrCat("capacity ", capacity, " exceeds ",
                                                   memory::kMaxPolicyCells, " cells"));
  }
  SINKSERVE_ASSIGN_OR_RETURN(memory::KvCache cache,
                             memory::KvCache::Create(options.policy, capacity));
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<KvStorage> kv,
                             backend->NewKvStorage(static_cast<int>(capacity)));
  return std::unique_ptr<Sequence>(
      new Sequence(backend, std::move(cache), std::move(kv), max_step));
}

absl::StatusOr<std::unique_ptr<Sequence>> Sequence::FromParts(
    Backend* backend, memory::KvCache cache, std::unique_ptr<KvStorage> kv,
    std::vector<PendingToken> pending, int max_step_tokens) {
  if (backend == nullptr || kv == nullptr) {
    return absl::InvalidArgumentError("sequence needs a backend and KV storage");
  }
  if (kv->capacity() != cache.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("KV storage has ", kv->capacity(),
                                                   " slots, the cache ", cache.capacity()));
  }
  if (max_step_tokens < 1) return absl::InvalidArgumentError("max_step_tokens must be >= 1");
  for (const PendingToken& p : pending) {
    if (p.token < 0 || p.token >= backend->config().vocab_size || std::isnan(p.score)) {
      return absl::InvalidArgumentError(absl::StrCat("bad pending token ", p.token));
    }
  }
  auto seq = std::unique_ptr<Sequence>(
      new Sequence(backend, std::move(cache), std::move(kv), max_step_tokens));
  seq->pending_ = std::move(pending);
  return seq;
}

Sequence::Sequence(Backend* backend, memory::KvCache cache, std::unique_ptr<KvStorage> kv,
                   int max_step_tokens)
    : backend_(backend),
      cache_(std::move(cache)),
      kv_(std::move(kv)),
      max_step_tokens_(max_step_tokens),
      keeps_scores_(cache_.policy().kind == memory::PolicyKind::kSirLlm),
      vocab_(backend->config().vocab_size) {}

void Sequence::AddPending(int32_t token, absl::Span<const float> logits) {
  float score = 0.0f;
  if (keeps_scores_ && static_cast<int64_t>(logits.size()) == vocab_) {
    score = static_cast<float>(Surprisal(logits, token));
  }
  pending_.push_back({token, score});
}

int Sequence::StepLimit() const {
  if (planned_) return 0;
  return std::min(max_step_tokens_, cache_.free_slots());
}

absl::StatusOr<SequenceStep> Sequence::Prepare(absl::Span<const int32_t> tokens,
                                               LogitsMode mode, int* taken) {
  if (planned_) return absl::FailedPreconditionError("a step is already planned");
  if (pending_.empty() && tokens.empty()) {
    return absl::InvalidArgumentError("nothing to feed");
  }
  const int limit = StepLimit();
  if (limit == 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: ", cache_.size(), " cells under policy ", cache_.policy().ToString()));
  }
  for (int32_t id : tokens.subspan(0, std::min<size_t>(tokens.size(), limit))) {
    if (id < 0 || id >= vocab_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " outside the vocabulary of ", vocab_));
    }
  }
  const int n_pending = std::min<int>(pending_.size(), limit);
  const int n_new = std::min<int>(tokens.size(), limit - n_pending);
  step_tokens_.clear();
  for (int i = 0; i < n_pending; ++i) step_tokens_.push_back(pending_[i].token);
  step_tokens_.insert(step_tokens_.end(), tokens.begin(), tokens.begin() + n_new);
  SINKSERVE_ASSIGN_OR_RETURN(memory::StepPlan plan, cache_.Reserve(step_tokens_));

  step_pending_ = n_pending;
  step_mode_ = keeps_scores_ ? LogitsMode::kAll : mode;
  step_recomputed_ = plan.recomputed;
  planned_ = true;
  if (taken != nullptr) *taken = n_new;

  SequenceStep step;
  step.kv = kv_.get();
  step.context_slots = plan.context_slots;
  step.context_positions = plan.context_positions;
  step.tokens = plan.tokens;
  step.token_slots = plan.token_slots;
  step.token_positions = plan.token_positions;
  step.logits = step_mode_;
  return step;
}

void Sequence::Abort() {
  if (!planned_) return;
  cache_.Cancel();
  planned_ = false;
}

absl::Status Sequence::Complete(absl::Span<const float> logits) {
  if (!planned_) return absl::FailedPreconditionError("no step is planned");
  const int64_t n = step_tokens_.size();
  const int64_t rows = step_mode_ == LogitsMode::kNone   ? 0
                       : step_mode_ == LogitsMode::kLast ? 1
                                                         : step_recomputed_ + n;
  if (static_cast<int64_t>(logits.size()) != rows * vocab_) {
    Abort();
    return absl::InternalError(absl::StrCat("backend returned ", logits.size(),
                                            " logits, expected ", rows, " x ", vocab_));
  }
  // Rows of the new tokens only: recompute re-encodes cached tokens first.
  const float* first = logits.data() + (rows > 1 ? step_recomputed_ * vocab_ : 0);
  const int64_t new_rows = rows > 1 ? n : rows;
  scores_.clear();
  if (keeps_scores_) {
    for (int64_t i = 0; i < n; ++i) {
      if (i < step_pending_) {
        scores_.push_back(pending_[i].score);
      } else if (i > 0) {
        absl::Span<const float> prev(first + (i - 1) * vocab_, vocab_);
        scores_.push_back(static_cast<float>(Surprisal(prev, step_tokens_[i])));
      } else {
        // Predicted by the previous step's last row, if this process saw it.
        scores_.push_back(last_logits_.empty()
                              ? 0.0f
                              : static_cast<float>(Surprisal(last_logits_, step_tokens_[0])));
      }
    }
  }
  if (absl::Status s = cache_.Commit(scores_); !s.ok()) {
    Abort();
    return s;
  }
  planned_ = false;
  step_rows_ = new_rows;
  step_logits_.assign(first, first + new_rows * vocab_);
  if (new_rows > 0) {
    last_logits_.assign(first + (new_rows - 1) * vocab_, first + new_rows * vocab_);
  } else {
    last_logits_.clear();
  }
  pending_.erase(pending_.begin(), pending_.begin() + step_pending_);
  last_evicted_ = cache_.Trim();
  return absl::OkStatus();
}

absl::Status Sequence::Feed(
    absl::Span<const int32_t> tokens, LogitsMode mode,
    const std::function<void(absl::Span<const float> rows, int64_t n)>& on_rows) {
  size_t done = 0;
  while (!pending_.empty() || done < tokens.size()) {
    const bool last_step =
        pending_.size() + (tokens.size() - done) <= static_cast<size_t>(StepLimit());
    const LogitsMode step_mode = on_rows ? LogitsMode::kAll
                                 : last_step ? mode
                                             : LogitsMode::kNone;
    int taken = 0;
    SINKSERVE_ASSIGN_OR_RETURN(SequenceStep step,
                               Prepare(tokens.subspan(done), step_mode, &taken));
    if (absl::Status s = backend_->Forward({step}, &result_); !s.ok()) {
      Abort();
      return s;
    }
    SINKSERVE_RETURN_IF_ERROR(Complete(result_.logits[0]));
    if (on_rows) on_rows(step_logits_, step_rows_);
    done += taken;
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
