// KvCache: the metadata side of one sequence's KV cache.
//
// It decides which backend slot holds which cached token and at which RoPE
// position, and applies the cache policy; the K/V rows themselves live in the
// backend's KvStorage, which never moves anything on eviction: an evicted
// cell's slot just goes back to the free list and is overwritten later.
//
// One decode/prefill step:
//
//   ASSIGN_OR_RETURN(StepPlan plan, cache.Reserve(new_tokens));
//   engine::SequenceStep step{kv, plan.context_slots, plan.context_positions,
//                             plan.tokens, plan.token_slots,
//                             plan.token_positions, logits_mode};
//   RETURN_IF_ERROR(backend.Forward({step}, &result));  // on error: Cancel()
//   RETURN_IF_ERROR(cache.Commit(scores_of_new_tokens));
//   cache.Trim();
//
// A token's score is its surprisal -ln p(token | previous tokens), read off
// the logits that predicted it: for a decoded token those of the previous
// step, for prompt token i of a chunk row i-1 of the same step (row 0's token
// uses the previous step's last row). So scores are normally known by Commit;
// SetScore fills them in later otherwise.
//
// Positions are logical indices (0..size-1), so they are renumbered after
// every eviction: keys are stored before RoPE and rotated inside attention.
//
// Capacity: a bounded policy keeps at most `budget` cells after Trim, so each
// step can reserve up to capacity - budget new slots. Pick
// capacity = MinCapacity(policy, largest step). Under `full`, Trim never evicts
// and Reserve fails with RESOURCE_EXHAUSTED once the slots run out.
//
// Not thread-safe; a session owns its cache. Copying is explicit (Copy()).
#ifndef SINKSERVE_MEMORY_KV_CACHE_H_
#define SINKSERVE_MEMORY_KV_CACHE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "memory/cache_policy.h"

namespace sinkserve::memory {

// What one step hands to the backend for this sequence (the fields of
// engine::SequenceStep). Spans point into the KvCache and stay valid until its
// next non-const call.
struct StepPlan {
  // Cached cells the new tokens attend to, in logical order.
  absl::Span<const int32_t> context_slots;
  absl::Span<const int32_t> context_positions;
  // Tokens to run. Normally just the new tokens; under `recompute` the last
  // cached tokens come first (re-encoded from scratch, context empty).
  absl::Span<const int32_t> tokens;
  absl::Span<const int32_t> token_slots;
  absl::Span<const int32_t> token_positions;
  // How many leading entries of `tokens` are re-encoded cached tokens (0 unless
  // recompute). With LogitsMode::kAll the new tokens' rows start here.
  int recomputed = 0;
};

// A run of arrivals kept whatever the policy says: a session's system
// prompt, or a turn its client asked to keep. Pinned cells are never evicted,
// so every arrival of a pin that has arrived is a cell of the cache.
struct Pin {
  // The client's name for it (a turn id); "" = the system prompt.
  // Default: "".
  std::string label;
  // Arrivals [first, end). Default: 0, 0.
  int64_t first = 0;
  int64_t end = 0;

  int64_t size() const { return end - first; }
  friend bool operator==(const Pin& a, const Pin& b) {
    return a.label == b.label && a.first == b.first && a.end == b.end;
  }
  friend bool operator!=(const Pin& a, const Pin& b) { return !(a == b); }
};
// Longest pin label (a client's turn id).
inline constexpr size_t kMaxPinLabelBytes = 256;

// Everything needed to rebuild a KvCache (for snapshots).
struct KvCacheState {
  std::vector<Cell> cells;    // logical order
  int64_t tokens_seen = 0;    // next arrival index
  int64_t evicted_total = 0;  // cells evicted over the session's life
  // Ascending by arrival, disjoint, none empty, all below tokens_seen.
  // Cells' `pinned` flags follow from them (MarkPinned).
  std::vector<Pin> pins;
};

// Sets every cell's `pinned` flag from state->pins.
void MarkPinned(KvCacheState* state);

// INVALID_ARGUMENT unless the pins are as KvCacheState says, their labels are
// distinct and at most kMaxPinLabelBytes, every arrival they cover is one of
// the cells (pinned cells are never evicted) and the cells' flags match.
// Cells must already ascend by arrival.
absl::Status ValidatePins(const KvCacheState& state);

class KvCache {
 public:
  // Capacity a bounded policy needs to take steps of up to `max_step_tokens`
  // new tokens: budget + max_step_tokens. Under `full` (no budget) just
  // max_step_tokens; choose more, e.g. the model's context length.
  static int64_t MinCapacity(const PolicyConfig& policy, int max_step_tokens);

  // INVALID_ARGUMENT if the policy is invalid or capacity < MinCapacity(policy,
  // 1).
  static absl::StatusOr<KvCache> Create(const PolicyConfig& policy,
                                        int capacity);

  // Rebuilds a cache from State(): cells in logical order with strictly
  // increasing arrivals < tokens_seen, distinct slots in [0, capacity), no NaN
  // score, pins as ValidatePins wants (cells' flags are set from them). More
  // cells than the budget is allowed (e.g. a snapshot restored under a
  // smaller policy); call Trim().
  static absl::StatusOr<KvCache> Restore(const PolicyConfig& policy,
                                         int capacity,
                                         const KvCacheState& state);

  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;
  KvCache Copy() const { return KvCache(*this); }

  const PolicyConfig& policy() const { return policy_; }
  int capacity() const { return capacity_; }
  // Cells kept after Trim: the policy's budget, or capacity under `full`.
  int budget() const { return budget_; }
  // Most new tokens one Reserve can take right now.
  int free_slots() const { return static_cast<int>(free_.size()); }
  int size() const { return static_cast<int>(end_ - begin_); }
  bool empty() const { return end_ == begin_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  int64_t evicted_total() const { return evicted_total_; }
  // True between Reserve and Commit/Cancel.
  bool reserved() const { return !pending_tokens_.empty(); }

  // Cell metadata in logical order; cells()[i] sits at position i.
  absl::Span<const Cell> cells() const {
    return absl::MakeConstSpan(cells_.data() + begin_, size());
  }
  // Slots of cells() in logical order, contiguous, for the backend.
  absl::Span<const int32_t> context_slots() const {
    return absl::MakeConstSpan(slots_.data() + begin_, size());
  }
  // 0..size()-1.
  absl::Span<const int32_t> context_positions() const {
    return absl::MakeConstSpan(positions_.data(), size());
  }

  // Takes free slots for `tokens` (positions size()..size()+n-1) and returns
  // the step to run. RESOURCE_EXHAUSTED if fewer than n slots are free (after
  // Trim a bounded policy always has capacity - budget); FAILED_PRECONDITION
  // if a reservation is pending; INVALID_ARGUMENT if tokens is empty.
  absl::StatusOr<StepPlan> Reserve(absl::Span<const int32_t> tokens);
  // Appends the reserved tokens as cells. `scores` has one surprisal per new
  // token, or is empty when they are not known yet (0 until SetScore). The
  // session's first cell always scores +inf. INVALID_ARGUMENT on a size
  // mismatch or a NaN score (the reservation stays pending).
  absl::Status Commit(absl::Span<const float> scores);
  // Gives the reserved slots back, e.g. when the forward pass failed.
  void Cancel();
  // Reserve + Commit without running anything: tracking tokens whose K/V is
  // not needed, and tests.
  absl::Status Append(absl::Span<const int32_t> tokens,
                      absl::Span<const float> scores);

  // Pins the `n` tokens that will arrive as arrivals first..first+n-1 (first
  // >= tokens_seen(): e.g. a prompt about to be fed), under `label`.
  // INVALID_ARGUMENT for n < 1, a label over kMaxPinLabelBytes, first before
  // tokens_seen() or inside an earlier pin; ALREADY_EXISTS when the label
  // names a pin; RESOURCE_EXHAUSTED, naming the numbers, when pinned_total()
  // + n exceeds `limit` (at most the policy's PinLimit(); callers pass less
  // to keep a larger window).
  absl::Status PinTokens(std::string label, int64_t first, int64_t n,
                         int64_t limit);
  // Ends the pins of tokens that will not arrive (a turn that stopped before
  // its prompt was fed): pins are cut at tokens_seen() and empty ones dropped.
  // Returns how many pinned arrivals were given up.
  int64_t ClosePins();
  // Unpins the cells of the pin named `label`; the next Trim may evict them.
  // NOT_FOUND if no pin has that label.
  absl::Status Unpin(std::string_view label);
  const std::vector<Pin>& pins() const { return pins_; }
  // Cells pinned now.
  int pinned() const { return pinned_; }
  // Arrivals covered by pins, including those still to arrive: what counts
  // against the pin limit.
  int64_t pinned_total() const;

  // Applies the policy; evicted slots go back to the free list. Returns how
  // many cells were evicted (also added to evicted_total()). After it, size()
  // <= budget(). O(sinks + evicted) for window/streaming/recompute; for
  // sirllm O(budget) at worst (selection among the middle cells, then moving
  // the shorter side of the cache over the gaps).
  int Trim();

  // Sets the score of the cell that arrived as token `arrival` (arrival
  // indices survive eviction; logical indices do not). NOT_FOUND if it was
  // evicted, OUT_OF_RANGE if it never arrived, INVALID_ARGUMENT for NaN. The
  // session's first cell keeps +inf.
  absl::Status SetScore(int64_t arrival, float score);

  // Multiplies every stored score by `factor` in (0, 1] (+inf stays +inf).
  absl::Status Decay(float factor);
  // Decay by the policy's per-round factor; call at each round boundary (one
  // user turn + one reply).
  void EndRound();

  KvCacheState State() const;

  // Verifies the bookkeeping: arrivals increasing, every slot exactly once in
  // cells, reservation or free list, slot mirror in sync. O(capacity); for
  // tests and debug checks.
  absl::Status CheckInvariants() const;

 private:
  KvCache(const PolicyConfig& policy, int capacity);
  KvCache(const KvCache&) = default;
  KvCache& operator=(const KvCache&) = default;

  // Moves the live range to the front of the buffers when `n` more cells
  // would not fit behind it.
  void MakeRoom(int n);
  // Removes the cells at `evicted` (ascending logical indices, non-empty) and
  // frees their slots.
  void Evict(absl::Span<const int32_t> evicted);
  void FreeSlot(int32_t slot) { free_.push_back(slot); }

  PolicyConfig policy_;
  int capacity_ = 0;
  int budget_ = 0;

  // Live cells are cells_[begin_, end_) in logical order; slots_ mirrors their
  // slots so the backend gets a contiguous array without copying. Both are
  // 2 * capacity long so that sliding the range forward on eviction needs a
  // compaction only once per ~capacity appends (amortised O(1) per token).
  std::vector<Cell> cells_;
  std::vector<int32_t> slots_;
  int64_t begin_ = 0;
  int64_t end_ = 0;

  // Free slots, used as a stack (LIFO keeps recently freed rows warm).
  std::vector<int32_t> free_;
  // 0..capacity-1, the source of every positions span.
  std::vector<int32_t> positions_;

  // The pending reservation.
  std::vector<int32_t> pending_tokens_;
  std::vector<int32_t> pending_slots_;
  // Under recompute: cached + new tokens/slots of the pending step.
  std::vector<int32_t> plan_tokens_;
  std::vector<int32_t> plan_slots_;
  // Scratch for Trim, kept to avoid an allocation per token.
  std::vector<int32_t> evicted_;
  // Ascending, disjoint; see KvCacheState::pins.
  std::vector<Pin> pins_;
  int pinned_ = 0;  // cells whose `pinned` is set

  int64_t tokens_seen_ = 0;
  int64_t evicted_total_ = 0;
};

}  // namespace sinkserve::memory

#endif  // SINKSERVE_MEMORY_KV_CACHE_H_
