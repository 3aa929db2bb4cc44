// The decode loop of one turn on one Sequence: prompt -> chunked prefill
// (evicting between chunks under a bounded policy, so any prompt length
// works) -> sample -> stream text, until end of text, a stop string, max
// tokens or a full cache (`full` policy only).
#ifndef SINKSERVE_ENGINE_GENERATOR_H_
#define SINKSERVE_ENGINE_GENERATOR_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/tokenizer/tokenizer.h"

namespace sinkserve::engine {

// Cell i lives in slot i at RoPE position i; cells are only appended. The
// cache of micro-benchmarks that must not pay for any bookkeeping.
class InOrderCache {
 public:
  explicit InOrderCache(int capacity);

  int size() const { return size_; }
  int capacity() const { return static_cast<int>(index_.size()); }
  int free() const { return capacity() - size_; }
  void Clear() { size_ = 0; }

  // Fills the cache fields of `step` (context = every cell so far; `n` new
  // tokens in the next slots). Needs n <= free(). Spans point into the cache.
  void Plan(int n, SequenceStep* step) const;
  // Records that the `n` planned tokens are now cached.
  void Commit(int n) { size_ += n; }

 private:
  std::vector<int32_t> index_;  // (capacity): 0, 1, 2, ... serves as slots and positions
  int size_ = 0;
};

enum class StopReason {
  kMaxTokens,    // max_tokens generated
  kEndOfText,    // EOS, or BOS emitted mid-text (llama2.c models end a story so)
  kStopString,   // generated text reached a stop string
  kContextFull,  // the cache has no room for the next token
  kCancelled,    // a callback asked to stop
};
std::string_view StopReasonName(StopReason reason);

struct GeneratorOptions {
  // Tokens to generate at most.
  // Default: 256.
  int max_tokens = 256;
  // Prompt tokens per prefill step (bounds activation memory).
  // Default: 512.
  int prefill_chunk = 512;
  // Generation stops before the first occurrence of any of these in the text;
  // the stop string itself is not emitted.
  // Default: none.
  std::vector<std::string> stop_strings;
  // Whether EOS (and BOS emitted mid-text) end the generation; when false
  // they are generated and fed back like any token (fixed-length runs).
  // Default: true.
  bool stop_at_end_of_text = true;
  // More ids that end the text like EOS when stop_at_end_of_text (a chat
  // template's end-of-turn token, e.g. Llama 3's <|eot_id|>, which renders as
  // no text and so cannot be a stop string).
  // Default: none.
  std::vector<int32_t> end_of_text_ids;
};

struct GeneratorCallbacks {
  // Every generated token except the one ending the text; false stops.
  std::function<bool(int32_t id)> on_token;
  // Text as it becomes final (whole UTF-8 characters, stop strings held back).
  std::function<void(std::string_view text)> on_text;
  // Generated ids as their text becomes final, in order, right after the
  // on_text call that released it. Unlike on_token it leaves out the tokens
  // whose text lies wholly in a stop string (or after it): what a client that
  // keeps ids alongside the text should record.
  std::function<void(int32_t id)> on_ids;
  // When set, logits of every position are computed and passed here:
  // (rows, vocab) for each forward step (prefill chunks, then one row per
  // fed-back token). Costs a vocab-wide matmul per prompt token.
  std::function<void(absl::Span<const float> logits, int64_t rows)> on_logits;
};

struct GenerationStats {
  int prompt_tokens = 0;
  double prompt_seconds = 0;  // prefill, up to the first logits
  int generated_tokens = 0;
  double generate_seconds = 0;  // from the first logits to the end
  StopReason stop = StopReason::kMaxTokens;
  int64_t evicted = 0;  // cells the policy evicted during the turn
};

// One turn on one Sequence, advanced one forward step at a time, so that a
// scheduler can batch the steps of many turns into one Backend::Forward while
// every turn takes exactly the steps (prefill chunks, then one token each)
// and the sampling decisions it would take alone. RunTurn is this driver
// stepped alone.
//
//   TurnDriver turn(seq, tokenizer, sampler, options, callbacks);
//   RETURN_IF_ERROR(turn.Start(prompt));
//   while (!turn.done()) {
//     ASSIGN_OR_RETURN(SequenceStep step, turn.Prepare());
//     ... backend->Forward({step, ...}, &result) ...  // on error: turn.Abort()
//     RETURN_IF_ERROR(turn.Complete(result.logits[i]));
//   }
//
// Callbacks run inside Complete(). The referenced objects must outlive the
// driver; the sequence must not be stepped by anyone else meanwhile.
class TurnDriver {
 public:
  TurnDriver(Sequence& seq, const Tokenizer& tokenizer, Sampler& sampler,
             const GeneratorOptions& options, const GeneratorCallbacks& callbacks);
  TurnDriver(const TurnDriver&) = delete;
  TurnDriver& operator=(const TurnDriver&) = delete;

  // Accepts the prompt into the sampler's penalty window. INVALID_ARGUMENT when
  // there is nothing to feed (empty prompt, no pending token).
  absl::Status Start(absl::Span<const int32_t> prompt);

  // The turn has ended (stats().stop says why); no more steps.
  bool done() const { return phase_ == Phase::kDone; }
  // Still feeding the prompt (or the previous turn's pending token).
  bool prefilling() const { return phase_ == Phase::kPrefill; }

  // Plans the next step on the sequence (see Sequence::Prepare).
  // RESOURCE_EXHAUSTED when a `full` cache cannot take the prompt.
  absl::StatusOr<SequenceStep> Prepare();
  // Finishes the planned step with this turn's logits from Forward, then, once
  // the prompt is in, samples the next token and emits its text; may end the
  // turn. An error leaves the turn unusable (the sequence stays consistent).
  absl::Status Complete(absl::Span<const float> logits);
  // Drops the planned step (the forward pass failed).
  void Abort();
  // Ends the turn now with kCancelled: what was fed or sampled stays (the last
  // sampled token pending), held-back text is flushed. No-op once done.
  void Cancel();

  const GenerationStats& stats() const { return stats_; }

 private:
  enum class Phase { kIdle, kPrefill, kDecode, kDone };

  // Samples from the sequence's last logits; ends the turn or leaves a token
  // pending for the next step.
  absl::Status SampleNext();
  void Finish(StopReason reason);
  void Emit(const std::string& text);
  // Passes to on_ids the held ids whose text is all emitted; with
  // `everything`, the rest too.
  void ReleaseIds(bool everything);
  // On a stop string: passes the held ids whose text starts before the stop
  // (already emitted) and drops the others.
  void ReleaseIdsBeforeStop();

  Sequence& seq_;
  const Tokenizer& tokenizer_;
  Sampler& sampler_;
  const GeneratorOptions& options_;
  const GeneratorCallbacks& callbacks_;

  Phase phase_ = Phase::kIdle;
  std::vector<int32_t> prompt_;
  size_t fed_ = 0;         // prompt tokens cached so far
  int planned_taken_ = 0;  // prompt tokens in the planned step
  bool planned_ = false;
  int64_t evicted_before_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::unique_ptr<StreamingDetokenizer> detokenizer_;
  std::string stop_pending_;  // text held back as a possible stop-string prefix
  // Generated ids not yet passed to on_ids, with the byte range of their text
  // in the detokenized reply; bytes are counted as produced and as emitted.
  struct HeldId {
    int32_t id;
    int64_t begin;
    int64_t end;
  };
  std::deque<HeldId> held_ids_;
  int64_t produced_bytes_ = 0;
  int64_t emitted_bytes_ = 0;
  GenerationStats stats_;
};

// Runs one turn on `seq`: feeds its pending tokens and `prompt` (which may be
// empty when tokens are pending), then samples. The last sampled token, an
// end-of-text one included, stays pending in `seq` so the next turn feeds it
// first. Prompt and generated tokens enter the sampler's penalty window.
// INVALID_ARGUMENT when there is nothing to feed; RESOURCE_EXHAUSTED when a
// `full` cache cannot take the prompt.
absl::StatusOr<GenerationStats> RunTurn(Sequence& seq, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt, Sampler& sampler,
                                        const GeneratorOptions& options,
                                        const GeneratorCallbacks& callbacks);

// One-shot generation from an empty `full` cache of `capacity` cells.
class Generator {
 public:
  static absl::StatusOr<std::unique_ptr<Generator>> Create(Backend* backend,
                                                           const Tokenizer* tokenizer,
                                                           int capacity);

  // Starts from an empty cache, feeds `prompt` (ids, BOS included when
  // wanted) and generates. INVALID_ARGUMENT for an empty prompt or one over
  // capacity.
  absl::StatusOr<GenerationStats> Generate(absl::Span<const int32_t> prompt,
                                           Sampler& sampler, const GeneratorOptions& options,
                                           const GeneratorCallbacks& callbacks);

 private:
  Generator(Backend* backend, const Tokenizer* tokenizer, int capacity)
      : backend_(backend), tokenizer_(tokenizer), capacity_(capacity) {}

  Backend* backend_;
  const Tokenizer* tokenizer_;
  int capacity_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GENERATOR_H_
