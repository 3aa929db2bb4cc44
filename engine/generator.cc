#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Appends `text` to the held-back `pending` text and returns what is now safe
// to emit: everything but the longest suffix that may start a stop string. On
// a stop string, returns the text before it and sets *hit.
std::string PushStopFiltered(const std::vector<std::string>& stops, std::string* pending,
                             std::string_view text, bool* hit) {
  pending->append(text);
  size_t cut = std::string::npos;
  for (const std::string& s : stops) {
    if (!s.empty()) cut = std::min(cut, pending->find(s));
  }
  if (cut != std::string::npos) {
    *hit = true;
    std::string out = pending->substr(0, cut);
    pending->clear();
    return out;
  }
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), pending->size()); k > hold; --k) {
      if (pending->compare(pending->size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending->substr(0, pending->size() - hold);
  pending->erase(0, pending->size() - hold);
  return out;
}

}  // namespace

InOrderCache::InOrderCache(int capacity) : index_(std::max(capacity, 0)) {
  std::iota(index_.begin(), index_.end(), 0);
}

void InOrderCache::Plan(int n, SequenceStep* step) const {
  absl::Span<const int32_t> all(index_);
  step->context_slots = all.subspan(0, size_);
  step->context_positions = all.subspan(0, size_);
  step->token_slots = all.subspan(size_, n);
  step->token_positions = all.subspan(size_, n);
}

std::string_view StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kMaxTokens:
      return "max tokens";
    case StopReason::kEndOfText:
      return "end of text";
    case StopReason::kStopString:
      return "stop string";
    case StopReason::kContextFull:
      return "context full";
    case StopReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

TurnDriver::TurnDriver(Sequence& seq, const Tokenizer& tokenizer, Sampler& sampler,
                       const GeneratorOptions& options, const GeneratorCallbacks& callbacks)
    : seq_(seq),
      tokenizer_(tokenizer),
      sampler_(sampler),
      options_(options),
      callbacks_(callbacks) {}

absl::Status TurnDriver::Start(absl::Span<const int32_t> prompt) {
  if (phase_ != Phase::kIdle) return absl::FailedPreconditionError("turn already started");
  if (prompt.empty() && seq_.pending().empty()) {
    return absl::InvalidArgumentError("empty prompt (start from BOS)");
  }
  const Vocab& vocab = tokenizer_.vocab();
  // SentencePiece's leading space is dropped only when the text starts here.
  const bool from_bos = seq_.cache().empty() && prompt.size() == 1 && prompt[0] == vocab.bos_id;
  detokenizer_ = std::make_unique<StreamingDetokenizer>(tokenizer_, from_bos);
  prompt_.assign(prompt.begin(), prompt.end());
  evicted_before_ = seq_.cache().evicted_total();
  stats_ = GenerationStats();
  held_ids_.clear();
  produced_bytes_ = 0;
  emitted_bytes_ = 0;
  stats_.prompt_tokens = prompt_.size();
  for (int32_t id : prompt_) sampler_.Accept(id);
  start_ = std::chrono::steady_clock::now();
  phase_ = Phase::kPrefill;
  return absl::OkStatus();
}

absl::StatusOr<SequenceStep> TurnDriver::Prepare() {
  if (phase_ != Phase::kPrefill && phase_ != Phase::kDecode) {
    return absl::FailedPreconditionError("turn not running");
  }
  if (planned_) return absl::FailedPreconditionError("a step is already planned");
  // Exactly Sequence::Feed's plan: only the step that ends the prompt needs
  // logits, unless every row is asked for.
  absl::Span<const int32_t> rest = absl::MakeConstSpan(prompt_).subspan(fed_);
  LogitsMode mode = LogitsMode::kLast;
  if (callbacks_.on_logits) {
    mode = LogitsMode::kAll;
  } else if (phase_ == Phase::kPrefill &&
             seq_.pending().size() + rest.size() > static_cast<size_t>(seq_.StepLimit())) {
    mode = LogitsMode::kNone;
  }
  int taken = 0;
  SINKSERVE_ASSIGN_OR_RETURN(
      SequenceStep step,
      seq_.Prepare(phase_ == Phase::kPrefill ? rest : absl::Span<const int32_t>(), mode, &taken));
  planned_taken_ = taken;
  planned_ = true;
  return step;
}

void TurnDriver::Abort() {
  if (!planned_) return;
  seq_.Abort();
  planned_ = false;
}

absl::Status TurnDriver::Complete(absl::Span<const float> logits) {
  if (!planned_) return absl::FailedPreconditionError("no step is planned");
  planned_ = false;
  SINKSERVE_RETURN_IF_ERROR(seq_.Complete(logits));
  if (callbacks_.on_logits) callbacks_.on_logits(seq_.step_logits(), seq_.step_rows());
  if (phase_ == Phase::kPrefill) {
    fed_ += planned_taken_;
    if (!seq_.pending().empty() || fed_ < prompt_.size()) return absl::OkStatus();
    stats_.prompt_seconds = SecondsSince(start_);
    start_ = std::chrono::steady_clock::now();
    phase_ = Phase::kDecode;
  }
  return SampleNext();
}

absl::Status TurnDriver::SampleNext() {
  if (stats_.generated_tokens >= options_.max_tokens) {
    Finish(StopReason::kMaxTokens);
    return absl::OkStatus();
  }
  if (seq_.last_logits().empty()) return absl::InternalError("no logits to sample from");
  const Vocab& vocab = tokenizer_.vocab();
  const int32_t id = sampler_.Sample(seq_.last_logits());
  sampler_.Accept(id);
  seq_.AddPending(id, seq_.last_logits());
  if (options_.stop_at_end_of_text && (id == vocab.eos_id || id == vocab.bos_id ||
                                       absl::c_linear_search(options_.end_of_text_ids, id))) {
    Finish(StopReason::kEndOfText);
    return absl::OkStatus();
  }
  ++stats_.generated_tokens;
  if (callbacks_.on_token && !callbacks_.on_token(id)) {
    Finish(StopReason::kCancelled);
    return absl::OkStatus();
  }
  bool hit = false;
  const std::string piece = detokenizer_->Push(id);
  held_ids_.push_back({id, produced_bytes_, produced_bytes_ + static_cast<int64_t>(piece.size())});
  produced_bytes_ += piece.size();
  Emit(PushStopFiltered(options_.stop_strings, &stop_pending_, piece, &hit));
  if (hit) {
    stop_pending_.clear();
    ReleaseIdsBeforeStop();
    Finish(StopReason::kStopString);
    return absl::OkStatus();
  }
  ReleaseIds(false);
  if (stats_.generated_tokens >= options_.max_tokens) {
    Finish(StopReason::kMaxTokens);  // the last token is fed next turn
  } else if (seq_.StepLimit() == 0) {
    Finish(StopReason::kContextFull);
  }
  return absl::OkStatus();
}

void TurnDriver::Cancel() {
  if (phase_ == Phase::kDone || phase_ == Phase::kIdle) return;
  Abort();
  if (phase_ == Phase::kPrefill) stats_.prompt_seconds = SecondsSince(start_);
  Finish(StopReason::kCancelled);
}

void TurnDriver::Emit(const std::string& text) {
  emitted_bytes_ += text.size();
  if (!text.empty() && callbacks_.on_text) callbacks_.on_text(text);
}

void TurnDriver::ReleaseIds(bool everything) {
  while (!held_ids_.empty() && (everything || held_ids_.front().end <= emitted_bytes_)) {
    if (callbacks_.on_ids) callbacks_.on_ids(held_ids_.front().id);
    held_ids_.pop_front();
  }
}

void TurnDriver::ReleaseIdsBeforeStop() {
  // A token whose text straddles the stop string's start is kept: part of its
  // text was emitted.
  while (!held_ids_.empty() && held_ids_.front().begin < emitted_bytes_) {
    if (callbacks_.on_ids) callbacks_.on_ids(held_ids_.front().id);
    held_ids_.pop_front();
  }
  held_ids_.clear();
}

void TurnDriver::Finish(StopReason reason) {
  stats_.stop = reason;
  if (reason != StopReason::kStopString) {
    bool hit = false;
    const std::string tail = detokenizer_->Finish();
    produced_bytes_ += tail.size();
    Emit(PushStopFiltered(options_.stop_strings, &stop_pending_, tail, &hit));
    if (hit) {
      stats_.stop = StopReason::kStopString;
      ReleaseIdsBeforeStop();
    } else {
      Emit(std::exchange(stop_pending_, std::string()));
      ReleaseIds(true);
    }
  }
  stats_.generate_seconds = SecondsSince(start_);
  stats_.evicted = seq_.cache().evicted_total() - evicted_before_;
  phase_ = Phase::kDone;
}

absl::StatusOr<GenerationStats> RunTurn(Sequence& seq, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt, Sampler& sampler,
                                        const GeneratorOptions& options,
                                        const GeneratorCallbacks& callbacks) {
  TurnDriver turn(seq, tokenizer, sampler, options, callbacks);
  SINKSERVE_RETURN_IF_ERROR(turn.Start(prompt));
  StepResult result;
  while (!turn.done()) {
    SINKSERVE_ASSIGN_OR_RETURN(SequenceStep step, turn.Prepare());
    if (absl::Status s = seq.backend()->Forward({step}, &result); !s.ok()) {
      turn.Abort();
      return s;
    }
    SINKSERVE_RETURN_IF_ERROR(turn.Complete(result.logits[0]));
  }
  return turn.stats();
}

absl::StatusOr<std::unique_ptr<Generator>> Generator::Create(Backend* backend,
                                                             const Tokenizer* tokenizer,
                                                             int capacity) {
  if (backend == nullptr || tokenizer == nullptr) {
    return absl::InvalidArgumentError("generator needs a backend and a tokenizer");
  }
  if (capacity < 1) return absl::InvalidArgumentError("generator needs a capacity >= 1");
  return std::unique_ptr<Generator>(new Generator(backend, tokenizer, capacity));
}

absl::StatusOr<GenerationStats> Generator::Generate(absl::Span<const int32_t> prompt,
                                                    Sampler& sampler,
                                                    const GeneratorOptions& options,
                                                    const GeneratorCallbacks& callbacks) {
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt (start from BOS)");
  if (static_cast<int>(prompt.size()) > capacity_) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt of ", prompt.size(), " tokens exceeds the cache of ", capacity_));
  }
  SequenceOptions seq_options;
  seq_options.capacity = capacity_;
  seq_options.max_step_tokens = std::max(options.prefill_chunk, 1);
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Sequence> seq,
                             Sequence::Create(backend_, seq_options));
  return RunTurn(*seq, *tokenizer_, prompt, sampler, options, callbacks);
}

}  // namespace sinkserve::engine
