#include "engine/step_checker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sinkserve::engine {

absl::Status StepChecker::Check(absl::Span<const SequenceStep> batch, size_t s, int capacity) {
  const SequenceStep& step = batch[s];
  for (size_t t = 0; t < s; ++t) {
    if (batch[t].kv == step.kv) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences ", t, " and ", s, " share one KV storage"));
    }
  }
  if (step.context_slots.size() != step.context_positions.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": ", step.context_slots.size(),
                                                   " context slots but ",
                                                   step.context_positions.size(), " positions"));
  }
  if (step.token_slots.size() != step.tokens.size() ||
      step.token_positions.size() != step.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": ", step.tokens.size(),
                                                   " tokens, ", step.token_slots.size(), " slots, ",
                                                   step.token_positions.size(), " positions"));
  }
  for (int32_t id : step.tokens) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, ": token ", id, " outside vocab of ", vocab_size_));
    }
  }
  for (auto positions : {step.context_positions, step.token_positions}) {
    for (int32_t p : positions) {
      if (p < 0 || p >= max_position_) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", s, ": position ", p, " outside [0, ", max_position_, ")"));
      }
    }
  }
  absl::Status slots = CheckSlots(step, capacity);
  if (!slots.ok()) {
    return absl::Status(slots.code(), absl::StrCat("sequence ", s, ": ", slots.message()));
  }
  return absl::OkStatus();
}

absl::Status StepChecker::CheckSlots(const SequenceStep& step, int capacity) {
  // A slot written by a new token must be neither read as context nor written
  // twice, or attention would silently read the wrong rows.
  if (static_cast<int64_t>(slot_mark_.size()) < capacity) slot_mark_.resize(capacity, 0);
  if (++stamp_ == 0) {  // wrapped: old stamps could collide
    std::fill(slot_mark_.begin(), slot_mark_.end(), 0);
    stamp_ = 1;
  }
  for (int32_t slot : step.token_slots) {
    if (slot < 0 || slot >= capacity) {
      return absl::OutOfRangeError(
          absl::StrCat("token slot ", slot, " outside KV storage of capacity ", capacity));
    }
    if (slot_mark_[slot] == stamp_) {
      return absl::InvalidArgumentError(
          absl::StrCat("token slot ", slot, " appears twice in one step"));
    }
    slot_mark_[slot] = stamp_;
  }
  // Only token slots are marked: a context slot given twice is harmless (two
  // cells reading one row), one shared with a new token is not.
  for (int32_t slot : step.context_slots) {
    if (slot < 0 || slot >= capacity) {
      return absl::OutOfRangeError(
          absl::StrCat("context slot ", slot, " outside KV storage of capacity ", capacity));
    }
    if (slot_mark_[slot] == stamp_) {
      return absl::InvalidArgumentError(
          absl::StrCat("context slot ", slot, " is also a new token's slot"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
