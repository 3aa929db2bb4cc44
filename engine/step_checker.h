// The checks every backend makes on a batch before its forward pass (the
// Backend contract of backend.h): sizes agree, ids are in the vocabulary,
// positions are in range, each KV storage appears once and no slot a new
// token writes is read or written by another cell of the same step. What is
// left to a backend is whether a KV storage is its own (type, model, dtype).
#ifndef SINKSERVE_ENGINE_STEP_CHECKER_H_
#define SINKSERVE_ENGINE_STEP_CHECKER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/backend.h"

namespace sinkserve::engine {

class StepChecker {
 public:
  // Tokens in [0, vocab_size), positions in [0, max_position).
  StepChecker(int64_t vocab_size, int64_t max_position)
      : vocab_size_(vocab_size), max_position_(max_position) {}

  // Checks batch[s], whose KV storage the backend has found to be its own,
  // with `capacity` slots. Errors name the sequence.
  absl::Status Check(absl::Span<const SequenceStep> batch, size_t s, int capacity);

 private:
  absl::Status CheckSlots(const SequenceStep& step, int capacity);

  int64_t vocab_size_;
  int64_t max_position_;
  // A slot is marked by the stamp of the step that writes it, so that the
  // marks need no clearing between sequences.
  std::vector<uint32_t> slot_mark_;  // (max capacity seen)
  uint32_t stamp_ = 0;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_STEP_CHECKER_H_
