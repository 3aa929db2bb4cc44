#include "memory/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::memory {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Keeps 2 * capacity (the buffer length) and every position inside int.
constexpr int64_t kMaxCapacity = int64_t{1} << 28;

// The pin covering `arrival`, or null. Pins ascend and are few.
const Pin* PinOf(const std::vector<Pin>& pins, int64_t arrival) {
  auto it = std::upper_bound(
      pins.begin(), pins.end(), arrival,
      [](int64_t a, const Pin& p) { return a < p.first; });
  if (it == pins.begin()) return nullptr;
  --it;
  return arrival < it->end ? &*it : nullptr;
}

}  // namespace

void MarkPinned(KvCacheState* state) {
  for (Cell& c : state->cells) c.pinned = PinOf(state->pins, c.arrival) != nullptr;
}

absl::Status ValidatePins(const KvCacheState& state) {
  const std::vector<Pin>& pins = state.pins;
  int64_t covered = 0;
  for (size_t i = 0; i < pins.size(); ++i) {
    const Pin& p = pins[i];
    if (p.label.size() > kMaxPinLabelBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pin ", i, ": label of ", p.label.size(), " bytes exceeds ",
          kMaxPinLabelBytes));
    }
    const int64_t floor = i == 0 ? 0 : pins[i - 1].end;
    if (p.first < floor || p.end <= p.first || p.end > state.tokens_seen) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pin ", i, " covers arrivals [", p.first, ", ", p.end,
          "); pins must be non-empty, ascending, disjoint and below "
          "tokens_seen ",
          state.tokens_seen));
    }
    for (size_t j = 0; j < i; ++j) {
      if (pins[j].label == p.label) {
        return absl::InvalidArgumentError(
            absl::StrCat("pins ", j, " and ", i, " have the same label"));
      }
    }
    covered += p.size();
  }
  int64_t flagged = 0;
  for (size_t i = 0; i < state.cells.size(); ++i) {
    const Cell& c = state.cells[i];
    const bool in_pin = PinOf(pins, c.arrival) != nullptr;
    if (c.pinned != in_pin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cell ", i, " (arrival ", c.arrival, ") is ",
          c.pinned ? "" : "not ", "marked pinned, its pins say otherwise"));
    }
    flagged += in_pin ? 1 : 0;
  }
  if (flagged != covered) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pins cover ", covered, " arrivals but only ", flagged,
        " of them are cells: pinned cells were evicted"));
  }
  return absl::OkStatus();
}

int64_t KvCache::MinCapacity(const PolicyConfig& policy, int max_step_tokens) {
  return int64_t{policy.Budget().value_or(0)} + max_step_tokens;
}

absl::StatusOr<KvCache> KvCache::Create(const PolicyConfig& policy,
                                        int capacity) {
  SINKSERVE_RETURN_IF_ERROR(policy.Validate());
  const int64_t min_capacity = MinCapacity(policy, 1);
  if (capacity < min_capacity || capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache capacity ", capacity, " for policy ", policy.ToString(),
        " must be in [", min_capacity, ", ", kMaxCapacity,
        "]: it must hold the budget plus the largest step"));
  }
  return KvCache(policy, capacity);
}

KvCache::KvCache(const PolicyConfig& policy, int capacity)
    : policy_(policy),
      capacity_(capacity),
      budget_(policy.Budget().value_or(capacity)),
      cells_(2 * static_cast<size_t>(capacity)),
      slots_(2 * static_cast<size_t>(capacity)),
      positions_(capacity) {
  std::iota(positions_.begin(), positions_.end(), 0);
  // Descending, so that pops hand out 0, 1, 2, ... on a fresh cache.
  free_.reserve(capacity);
  for (int32_t s = capacity - 1; s >= 0; --s) free_.push_back(s);
}

absl::StatusOr<KvCache> KvCache::Restore(const PolicyConfig& policy,
                                         int capacity,
                                         const KvCacheState& state) {
  SINKSERVE_ASSIGN_OR_RETURN(KvCache cache, Create(policy, capacity));
  const std::vector<Cell>& cells = state.cells;
  if (cells.size() > static_cast<size_t>(capacity)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "restore: ", cells.size(), " cells exceed capacity ", capacity));
  }
  if (state.evicted_total < 0) {
    return absl::InvalidArgumentError("restore: negative evicted_total");
  }
  std::vector<char> used(capacity, 0);
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    if (c.slot < 0 || c.slot >= capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat("restore: cell ", i, " has slot ", c.slot,
                       " outside [0, ", capacity, ")"));
    }
    if (used[c.slot]) {
      return absl::InvalidArgumentError(
          absl::StrCat("restore: slot ", c.slot, " used twice"));
    }
    used[c.slot] = 1;
    const int64_t min_arrival = i == 0 ? 0 : cells[i - 1].arrival + 1;
    if (c.arrival < min_arrival || c.arrival >= state.tokens_seen) {
      return absl::InvalidArgumentError(
          absl::StrCat("restore: cell ", i, " has arrival ", c.arrival,
                       "; arrivals must increase and stay below tokens_seen ",
                       state.tokens_seen));
    }
    if (std::isnan(c.score)) {
      return absl::InvalidArgumentError(
          absl::StrCat("restore: cell ", i, " has a NaN score"));
    }
  }
  KvCacheState marked;
  marked.cells = cells;
  marked.tokens_seen = state.tokens_seen;
  marked.pins = state.pins;
  MarkPinned(&marked);
  if (absl::Status s = ValidatePins(marked); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("restore: ", s.message()));
  }
  std::copy(marked.cells.begin(), marked.cells.end(), cache.cells_.begin());
  for (size_t i = 0; i < cells.size(); ++i) cache.slots_[i] = cells[i].slot;
  cache.pins_ = std::move(marked.pins);
  cache.pinned_ = static_cast<int>(std::count_if(
      marked.cells.begin(), marked.cells.end(),
      [](const Cell& c) { return c.pinned; }));
  cache.begin_ = 0;
  cache.end_ = static_cast<int64_t>(cells.size());
  cache.free_.clear();
  for (int32_t s = capacity - 1; s >= 0; --s) {
    if (!used[s]) cache.free_.push_back(s);
  }
  cache.tokens_seen_ = state.tokens_seen;
  cache.evicted_total_ = state.evicted_total;
  return cache;
}

absl::StatusOr<StepPlan> KvCache::Reserve(absl::Span<const int32_t> tokens) {
  if (reserved()) {
    return absl::FailedPreconditionError(
        "KV cache: Reserve while a reservation is pending (Commit or Cancel "
        "it first)");
  }
  const int n = static_cast<int>(tokens.size());
  if (n == 0)
    return absl::InvalidArgumentError("KV cache: Reserve of 0 tokens");
  if (n > free_slots()) {
    if (policy_.kind == PolicyKind::kFull) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "KV cache full: ", size(), " of ", capacity_, " slots hold cells, ",
          free_slots(), " free, ", n, " needed; policy full never evicts"));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: step of ", n, " tokens needs ", n, " free slots, ",
        free_slots(), " free (capacity ", capacity_, ", budget ", budget_,
        "); Trim after every Commit and split steps into at most ",
        capacity_ - budget_, " tokens"));
  }
  pending_tokens_.assign(tokens.begin(), tokens.end());
  pending_slots_.resize(n);
  for (int i = 0; i < n; ++i) {
    pending_slots_[i] = free_.back();
    free_.pop_back();
  }

  StepPlan plan;
  if (policy_.kind != PolicyKind::kRecompute) {
    plan.context_slots = context_slots();
    plan.context_positions = context_positions();
    plan.tokens = pending_tokens_;
    plan.token_slots = pending_slots_;
    plan.token_positions = absl::MakeConstSpan(positions_.data() + size(), n);
    return plan;
  }
  // Recompute: no context; the last window - n cached tokens are encoded again
  // from position 0 together with the new ones, so the last new token sees
  // exactly `window` tokens. Their old slots are rewritten in place.
  const int m = std::min(size(), std::max(0, policy_.window - n));
  plan_tokens_.clear();
  plan_slots_.clear();
  for (const Cell& c : cells().subspan(size() - m)) {
    plan_tokens_.push_back(c.token);
    plan_slots_.push_back(c.slot);
  }
  plan_tokens_.insert(plan_tokens_.end(), tokens.begin(), tokens.end());
  plan_slots_.insert(plan_slots_.end(), pending_slots_.begin(),
                     pending_slots_.end());
  plan.tokens = plan_tokens_;
  plan.token_slots = plan_slots_;
  plan.token_positions = absl::MakeConstSpan(positions_.data(), m + n);
  plan.recomputed = m;
  return plan;
}

absl::Status KvCache::Commit(absl::Span<const float> scores) {
  if (!reserved()) {
    return absl::FailedPreconditionError("KV cache: Commit without Reserve");
  }
  const int n = static_cast<int>(pending_tokens_.size());
  if (!scores.empty() && static_cast<int>(scores.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: Commit of ", n, " tokens got ", scores.size(),
                     " scores (want ", n, " or none)"));
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV cache: score ", i, " of the step is NaN"));
    }
  }
  MakeRoom(n);
  for (int i = 0; i < n; ++i) {
    Cell& c = cells_[end_];
    c.token = pending_tokens_[i];
    c.arrival = tokens_seen_++;
    c.score = c.arrival == 0 ? kInf : (scores.empty() ? 0.0f : scores[i]);
    c.slot = pending_slots_[i];
    c.pinned = !pins_.empty() && PinOf(pins_, c.arrival) != nullptr;
    pinned_ += c.pinned ? 1 : 0;
    slots_[end_] = c.slot;
    ++end_;
  }
  pending_tokens_.clear();
  pending_slots_.clear();
  return absl::OkStatus();
}

void KvCache::Cancel() {
  // Reverse order restores the free stack exactly as it was before Reserve.
  for (auto it = pending_slots_.rbegin(); it != pending_slots_.rend(); ++it) {
    FreeSlot(*it);
  }
  pending_tokens_.clear();
  pending_slots_.clear();
}

absl::Status KvCache::Append(absl::Span<const int32_t> tokens,
                             absl::Span<const float> scores) {
  if (!scores.empty() && scores.size() != tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: Append of ", tokens.size(), " tokens got ",
                     scores.size(), " scores"));
  }
  SINKSERVE_RETURN_IF_ERROR(Reserve(tokens).status());
  const absl::Status status = Commit(scores);
  if (!status.ok()) Cancel();
  return status;
}

absl::Status KvCache::PinTokens(std::string label, int64_t first, int64_t n,
                          int64_t limit) {
  if (n < 1) return absl::InvalidArgumentError("KV cache: pin of no tokens");
  if (label.size() > kMaxPinLabelBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: pin label of ", label.size(),
                     " bytes exceeds ", kMaxPinLabelBytes));
  }
  const int64_t floor =
      std::max(tokens_seen_, pins_.empty() ? int64_t{0} : pins_.back().end);
  if (first < floor) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: pin from arrival ", first, ": only tokens from ", floor,
        " on (not yet arrived, not pinned) can be pinned"));
  }
  for (const memory::Pin& p : pins_) {
    if (p.label == label) {
      return absl::AlreadyExistsError(
          label.empty() ? std::string("the system prompt is pinned already")
                        : absl::StrCat("turn '", label, "' is pinned already"));
    }
  }
  limit = std::min<int64_t>(limit, policy_.PinLimit());
  const int64_t total = pinned_total();
  if (total + n > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pinning ", n, " more cells would pin ", total + n, ", over the limit of ",
        limit, " for policy ", policy_.ToString(), " (", total,
        " pinned already); unpin a turn first"));
  }
  pins_.push_back(memory::Pin{std::move(label), first, first + n});
  return absl::OkStatus();
}

int64_t KvCache::ClosePins() {
  int64_t dropped = 0;
  for (memory::Pin& p : pins_) {
    if (p.end > tokens_seen_) {
      dropped += p.end - std::max(p.first, tokens_seen_);
      p.end = std::max(p.first, tokens_seen_);
    }
  }
  pins_.erase(std::remove_if(pins_.begin(), pins_.end(),
                             [](const memory::Pin& p) { return p.size() == 0; }),
              pins_.end());
  return dropped;
}

absl::Status KvCache::Unpin(std::string_view label) {
  auto it = std::find_if(pins_.begin(), pins_.end(), [label](const memory::Pin& p) {
    return p.label == label;
  });
  if (it == pins_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no pinned turn '", absl::string_view(label.data(), label.size()),
                     "'"));
  }
  for (int64_t i = begin_; i < end_; ++i) {
    Cell& c = cells_[i];
    if (c.arrival >= it->first && c.arrival < it->end && c.pinned) {
      c.pinned = false;
      --pinned_;
    }
  }
  pins_.erase(it);
  return absl::OkStatus();
}

int64_t KvCache::pinned_total() const {
  int64_t total = 0;
  for (const memory::Pin& p : pins_) total += p.size();
  return total;
}

int KvCache::Trim() {
  SelectEvicted(cells(), policy_, &evicted_, pinned_);
  if (evicted_.empty()) return 0;
  Evict(evicted_);
  const int count = static_cast<int>(evicted_.size());
  evicted_total_ += count;
  return count;
}

void KvCache::MakeRoom(int n) {
  if (end_ + n <= static_cast<int64_t>(cells_.size())) return;
  // size + n <= capacity, so afterwards at least capacity cells fit behind.
  std::copy(cells_.begin() + begin_, cells_.begin() + end_, cells_.begin());
  std::copy(slots_.begin() + begin_, slots_.begin() + end_, slots_.begin());
  end_ -= begin_;
  begin_ = 0;
}

void KvCache::Evict(absl::Span<const int32_t> evicted) {
  for (int32_t i : evicted) FreeSlot(slots_[begin_ + i]);
  // Close the gaps by moving whichever side holds fewer cells: the cells in
  // front of the last evicted one slide up, or those behind the first evicted
  // one slide down. Sinks + a window evicting at the front of the window
  // moves only the sinks, so StreamingLLM pays O(sinks) per token.
  const int64_t front_cost = evicted.back();
  const int64_t back_cost = size() - evicted.front();
  size_t e = evicted.size();
  if (front_cost <= back_cost) {
    int64_t out = begin_ + evicted.back();
    for (int64_t i = evicted.back(); i >= 0; --i) {
      if (e > 0 && evicted[e - 1] == i) {
        --e;
        continue;
      }
      cells_[out] = cells_[begin_ + i];
      slots_[out] = slots_[begin_ + i];
      --out;
    }
    begin_ = out + 1;
  } else {
    e = 0;
    int64_t out = begin_ + evicted.front();
    for (int64_t i = evicted.front(); i < size(); ++i) {
      if (e < evicted.size() && evicted[e] == i) {
        ++e;
        continue;
      }
      cells_[out] = cells_[begin_ + i];
      slots_[out] = slots_[begin_ + i];
      ++out;
    }
    end_ = out;
  }
}

absl::Status KvCache::SetScore(int64_t arrival, float score) {
  if (std::isnan(score)) {
    return absl::InvalidArgumentError("KV cache: NaN score");
  }
  if (arrival < 0 || arrival >= tokens_seen_) {
    return absl::OutOfRangeError(absl::StrCat("KV cache: no token arrived as ",
                                              arrival, " (", tokens_seen_,
                                              " seen)"));
  }
  Cell* const first = cells_.data() + begin_;
  Cell* const last = cells_.data() + end_;
  Cell* const it =
      std::lower_bound(first, last, arrival,
                       [](const Cell& c, int64_t a) { return c.arrival < a; });
  if (it == last || it->arrival != arrival) {
    return absl::NotFoundError(
        absl::StrCat("KV cache: token ", arrival, " was evicted"));
  }
  if (arrival != 0) it->score = score;  // the first cell stays +inf
  return absl::OkStatus();
}

absl::Status KvCache::Decay(float factor) {
  if (!(factor > 0.0f && factor <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: decay factor must be in (0, 1], got ", factor));
  }
  for (int64_t i = begin_; i < end_; ++i) cells_[i].score *= factor;
  return absl::OkStatus();
}

void KvCache::EndRound() {
  // policy_ was validated, so its decay is in (0, 1].
  for (int64_t i = begin_; i < end_; ++i) cells_[i].score *= policy_.decay;
}

KvCacheState KvCache::State() const {
  KvCacheState state;
  state.cells.assign(cells().begin(), cells().end());
  state.tokens_seen = tokens_seen_;
  state.evicted_total = evicted_total_;
  state.pins = pins_;
  // A pin still waiting for its tokens (a turn under way) is cut to what
  // arrived, so that the state is complete on its own.
  for (memory::Pin& p : state.pins) p.end = std::min(p.end, tokens_seen_);
  state.pins.erase(
      std::remove_if(state.pins.begin(), state.pins.end(),
                     [](const memory::Pin& p) { return p.size() <= 0; }),
      state.pins.end());
  return state;
}

absl::Status KvCache::CheckInvariants() const {
  if (begin_ < 0 || begin_ > end_ ||
      end_ > static_cast<int64_t>(cells_.size()) || size() > capacity_) {
    return absl::InternalError(
        absl::StrCat("KV cache: bad range [", begin_, ", ", end_, ")"));
  }
  std::vector<int> uses(capacity_, 0);
  auto use = [&](int32_t slot, const char* where) -> absl::Status {
    if (slot < 0 || slot >= capacity_) {
      return absl::InternalError(
          absl::StrCat("KV cache: ", where, " slot ", slot, " out of range"));
    }
    if (++uses[slot] > 1) {
      return absl::InternalError(
          absl::StrCat("KV cache: slot ", slot, " used twice (", where, ")"));
    }
    return absl::OkStatus();
  };
  const absl::Span<const Cell> live = cells();
  int pinned = 0;
  for (int i = 0; i < size(); ++i) {
    const Cell& c = live[i];
    pinned += c.pinned ? 1 : 0;
    if (c.pinned != (PinOf(pins_, c.arrival) != nullptr)) {
      return absl::InternalError(
          absl::StrCat("KV cache: cell ", i, " pinned flag disagrees with pins"));
    }
    if (c.slot != slots_[begin_ + i]) {
      return absl::InternalError(
          absl::StrCat("KV cache: slot mirror differs at cell ", i));
    }
    if (i > 0 && c.arrival <= live[i - 1].arrival) {
      return absl::InternalError(
          absl::StrCat("KV cache: arrivals not increasing at cell ", i));
    }
    if (c.arrival < 0 || c.arrival >= tokens_seen_) {
      return absl::InternalError(
          absl::StrCat("KV cache: cell ", i, " arrival out of range"));
    }
    SINKSERVE_RETURN_IF_ERROR(use(c.slot, "cell"));
  }
  if (pinned != pinned_) {
    return absl::InternalError(absl::StrCat("KV cache: ", pinned,
                                            " pinned cells, counted ", pinned_));
  }
  SINKSERVE_RETURN_IF_ERROR(ValidatePins(State()));
  for (int32_t s : pending_slots_) SINKSERVE_RETURN_IF_ERROR(use(s, "pending"));
  for (int32_t s : free_) SINKSERVE_RETURN_IF_ERROR(use(s, "free"));
  const int64_t accounted =
      int64_t{size()} + pending_slots_.size() + free_.size();
  if (accounted != capacity_) {
    return absl::InternalError(absl::StrCat(
        "KV cache: ", accounted, " slots accounted for, capacity ", capacity_));
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::memory
