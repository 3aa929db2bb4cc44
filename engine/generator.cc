#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::engine {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Holds back text that might be the start of a stop string, and cuts the
// text at the first stop string found.
class StopFilter {
 public:
  explicit StopFilter(const std::vector<std::string>& stops) : stops_(stops) {}

  // Appends `text`; returns what is now safe to emit. On a stop string,
  // returns the text before it and sets *hit.
  std::string Push(std::string_view text, bool* hit) {
    pending_.append(text);
    size_t cut = std::string::npos;
    for (const std::string& s : stops_) {
      if (!s.empty()) cut = std::min(cut, pending_.find(s));
    }
    if (cut != std::string::npos) {
      *hit = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      return out;
    }
    // Longest suffix of pending_ that is a proper prefix of a stop string.
    size_t hold = 0;
    for (const std::string& s : stops_) {
      for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), pending_.size()); k > hold;
           --k) {
        if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
      }
    }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }

  std::string Finish() { return std::exchange(pending_, std::string()); }

 private:
  const std::vector<std::string>& stops_;
  std::string pending_;
};

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

absl::StatusOr<GenerationStats> RunTurn(Sequence& seq, const Tokenizer& tokenizer,
                                        absl::Span<const int32_t> prompt, Sampler& sampler,
                                        const GeneratorOptions& options,
                                        const GeneratorCallbacks& callbacks) {
  if (prompt.empty() && seq.pending().empty()) {
    return absl::InvalidArgumentError("empty prompt (start from BOS)");
  }
  const Vocab& vocab = tokenizer.vocab();
  auto is_end_of_text = [&](int32_t id) { return id == vocab.eos_id || id == vocab.bos_id; };
  std::function<void(absl::Span<const float>, int64_t)> on_rows;
  if (callbacks.on_logits) on_rows = callbacks.on_logits;
  const int64_t evicted_before = seq.cache().evicted_total();
  // SentencePiece's leading space is dropped only when the text starts here.
  const bool from_bos =
      seq.cache().empty() && prompt.size() == 1 && prompt[0] == vocab.bos_id;

  GenerationStats stats;
  stats.prompt_tokens = prompt.size();
  for (int32_t id : prompt) sampler.Accept(id);
  auto start = std::chrono::steady_clock::now();
  SINKSERVE_RETURN_IF_ERROR(seq.Feed(prompt, LogitsMode::kLast, on_rows));
  stats.prompt_seconds = SecondsSince(start);
  start = std::chrono::steady_clock::now();

  StreamingDetokenizer detokenizer(tokenizer, from_bos);
  StopFilter filter(options.stop_strings);
  auto emit = [&](const std::string& text) {
    if (!text.empty() && callbacks.on_text) callbacks.on_text(text);
  };
  bool stopped_by_string = false;
  stats.stop = StopReason::kMaxTokens;
  while (stats.generated_tokens < options.max_tokens) {
    if (seq.last_logits().empty()) return absl::InternalError("no logits to sample from");
    const int32_t id = sampler.Sample(seq.last_logits());
    sampler.Accept(id);
    seq.AddPending(id, seq.last_logits());
    if (options.stop_at_end_of_text && is_end_of_text(id)) {
      stats.stop = StopReason::kEndOfText;
      break;
    }
    ++stats.generated_tokens;
    if (callbacks.on_token && !callbacks.on_token(id)) {
      stats.stop = StopReason::kCancelled;
      break;
    }
    emit(filter.Push(detokenizer.Push(id), &stopped_by_string));
    if (stopped_by_string) {
      stats.stop = StopReason::kStopString;
      break;
    }
    if (stats.generated_tokens >= options.max_tokens) break;  // fed next turn
    if (seq.StepLimit() == 0) {
      stats.stop = StopReason::kContextFull;
      break;
    }
    SINKSERVE_RETURN_IF_ERROR(seq.Feed({}, LogitsMode::kLast, on_rows));
  }
  if (!stopped_by_string) {
    emit(filter.Push(detokenizer.Finish(), &stopped_by_string));
    if (stopped_by_string) {
      stats.stop = StopReason::kStopString;
    } else {
      emit(filter.Finish());
    }
  }
  stats.generate_seconds = SecondsSince(start);
  stats.evicted = seq.cache().evicted_total() - evicted_before;
  return stats;
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
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", prompt.size(),
                                                   " tokens exceeds the cache of ", capacity_));
  }
  SequenceOptions seq_options;
  seq_options.capacity = capacity_;
  seq_options.max_step_tokens = std::max(options.prefill_chunk, 1);
  SINKSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Sequence> seq,
                             Sequence::Create(backend_, seq_options));
  return RunTurn(*seq, *tokenizer_, prompt, sampler, options, callbacks);
}

}  // namespace sinkserve::engine
