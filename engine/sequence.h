// Sequence: one conversation's decoding state on a backend.
//
// It joins the memory module's KvCache (which cells are kept, at which
// position, with which score) to the backend's KvStorage (their K/V rows), and
// scores tokens for SirLLM: a token's score is its surprisal
// -ln p(token | context), read off the logits row that predicted it.
//
// Two ways to drive it:
//   - one sequence alone: Feed(tokens), then read last_logits();
//   - many sequences in one batched forward pass (the server's scheduler):
//       ASSIGN_OR_RETURN(SequenceStep s, seq.Prepare(tokens, mode, &taken));
//       ... backend->Forward({s, ...}, &result) ...
//       RETURN_IF_ERROR(seq.Complete(result.logits[i]));  // or Abort()
//
// Pending tokens. A generated token is sampled from the logits of the step
// before it but only enters the cache with the next step. The sequence keeps
// such tokens (with their scores, known at sampling time) as `pending` and
// feeds them first in the next step. A turn therefore ends with its last
// sampled token pending, which the next turn feeds: the cache holds the
// conversation exactly as generated, and every score is known without
// keeping logits across a checkpoint (pending tokens are part of a snapshot).
#ifndef SINKSERVE_ENGINE_SEQUENCE_H_
#define SINKSERVE_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "memory/cache_policy.h"
#include "memory/kv_cache.h"

namespace sinkserve::engine {

// -ln softmax(logits)[token], computed stably in double.
double Surprisal(absl::Span<const float> logits, int32_t token);

struct SequenceOptions {
  // Default: full.
  memory::PolicyConfig policy;
  // Most new tokens one step feeds (the prefill chunk): bounds activation
  // memory, and a bounded policy needs this many slots beyond its budget.
  // Default: 512.
  int max_step_tokens = 512;
  // KV slots. 0 picks KvCache::MinCapacity(policy, max_step_tokens) for a
  // bounded policy and the model's context length for `full`.
  // Default: 0.
  int capacity = 0;
};

// A generated token that is not cached yet.
struct PendingToken {
  int32_t token = 0;
  float score = 0.0f;  // surprisal; 0 when the policy keeps no scores
  friend bool operator==(const PendingToken& a, const PendingToken& b) {
    return a.token == b.token && a.score == b.score;
  }
};

class Sequence {
 public:
  static absl::StatusOr<std::unique_ptr<Sequence>> Create(Backend* backend,
                                                          const SequenceOptions& options);
  // Adopts a cache and the storage holding its rows (a restored snapshot).
  // INVALID_ARGUMENT unless the storage has exactly cache.capacity() slots.
  static absl::StatusOr<std::unique_ptr<Sequence>> FromParts(
      Backend* backend, memory::KvCache cache, std::unique_ptr<KvStorage> kv,
      std::vector<PendingToken> pending, int max_step_tokens);

  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  Backend* backend() const { return backend_; }
  const memory::KvCache& cache() const { return cache_; }
  memory::KvCache& mutable_cache() { return cache_; }
  KvStorage* kv() const { return kv_.get(); }
  int max_step_tokens() const { return max_step_tokens_; }
  // Whether tokens get surprisal scores (only SirLLM uses them; scoring a
  // prompt costs a vocab-wide matmul per token, so others skip it).
  bool keeps_scores() const { return keeps_scores_; }

  // Generated tokens waiting to be fed, oldest first.
  const std::vector<PendingToken>& pending() const { return pending_; }
  // Records a sampled token; `logits` (vocab) are the ones it was sampled
  // from, used for its score.
  void AddPending(int32_t token, absl::Span<const float> logits);

  // Most tokens the next step can take (0: a `full` cache out of slots).
  int StepLimit() const;

  // Plans a step over pending tokens followed by `tokens`, as many as
  // StepLimit() allows; *taken says how many of `tokens` went in (pending
  // tokens always go first and are counted apart). `mode` is what the caller
  // needs; SirLLM upgrades it to kAll. RESOURCE_EXHAUSTED when the cache is
  // full, INVALID_ARGUMENT when nothing is to be fed, FAILED_PRECONDITION while
  // a step is planned. The returned spans stay valid until Complete/Abort.
  absl::StatusOr<SequenceStep> Prepare(absl::Span<const int32_t> tokens, LogitsMode mode,
                                       int* taken);
  // Finishes the planned step with this sequence's logits from Forward:
  // scores the new cells, caches them, applies the policy (Trim).
  absl::Status Complete(absl::Span<const float> logits);
  // Drops the planned step (the forward pass failed); pending tokens stay.
  void Abort();

  // Feeds pending tokens then all of `tokens`, in as many steps as needed,
  // alone on the backend. `mode` applies to the last step (earlier ones use
  // kNone) unless `on_rows` is set: then every step runs with kAll and
  // on_rows receives its rows, (rows, vocab), pending tokens' rows included.
  absl::Status Feed(
      absl::Span<const int32_t> tokens, LogitsMode mode = LogitsMode::kLast,
      const std::function<void(absl::Span<const float> rows, int64_t n)>& on_rows = nullptr);

  // Logits after the last fed token, (vocab); empty until a step produced
  // logits (a restored sequence has none until it is fed).
  absl::Span<const float> last_logits() const { return last_logits_; }
  // Logits rows of the last completed step's new tokens (recomputed rows
  // excluded), (rows, vocab); rows = 0, 1 or the step's token count.
  absl::Span<const float> step_logits() const { return step_logits_; }
  int64_t step_rows() const { return step_rows_; }
  // Cells the last Complete evicted.
  int last_evicted() const { return last_evicted_; }

  // Ends a round (user turn + reply): SirLLM's score decay.
  void EndRound() { cache_.EndRound(); }
  // Pins `n` tokens of a prompt about to be fed, from its token `offset` on
  // (pending tokens go before the prompt), under `label`; see
  // memory::KvCache::PinTokens for the errors.
  absl::Status PinNextTokens(std::string label, int64_t offset, int64_t n, int64_t limit) {
    return cache_.PinTokens(std::move(label),
                            cache_.tokens_seen() + static_cast<int64_t>(pending_.size()) + offset,
                            n, limit);
  }

 private:
  Sequence(Backend* backend, memory::KvCache cache, std::unique_ptr<KvStorage> kv,
           int max_step_tokens);

  Backend* backend_;
  memory::KvCache cache_;
  std::unique_ptr<KvStorage> kv_;
  int max_step_tokens_;
  bool keeps_scores_;
  int64_t vocab_;

  std::vector<PendingToken> pending_;
  // The planned step: pending + new tokens fed, and the mode asked of Forward.
  std::vector<int32_t> step_tokens_;
  int step_pending_ = 0;
  LogitsMode step_mode_ = LogitsMode::kNone;
  int step_recomputed_ = 0;
  bool planned_ = false;

  std::vector<float> last_logits_;  // (vocab) or empty
  std::vector<float> step_logits_;  // (step_rows_, vocab)
  int64_t step_rows_ = 0;
  std::vector<float> scores_;       // (tokens of the step), scratch
  int last_evicted_ = 0;
  StepResult result_;               // for Feed
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_SEQUENCE_H_
