// Test-only helpers for the session store: random states, and a deterministic
// simulated session (real KvCache bookkeeping, synthetic K/V rows) whose state
// at any step can be recomputed from scratch, as the crash test needs.
#ifndef SINKSERVE_MEMORY_SESSION_TESTING_H_
#define SINKSERVE_MEMORY_SESSION_TESTING_H_

#include <cstdint>
#include <random>
#include <string>

#include "absl/types/span.h"
#include "memory/cache_policy.h"
#include "memory/session_state.h"

namespace sinkserve::memory::store_testing {

struct RandomStateOptions {
  // Default: "f32", 4 bytes, 2 layers, kv_dim 64.
  std::string dtype = "f32";
  int dtype_bytes = 4;
  int n_layers = 2;
  int kv_dim = 64;
  // Default: 100 cells in 128 slots.
  int cells = 100;
  int capacity = 128;
};

// A valid state with random cells (gaps in arrivals, shuffled slots, +inf
// first score, one -0.0f), random K/V bytes, sampler blob and times.
SessionState RandomState(std::mt19937_64& rng, const std::string& id,
                         const RandomStateOptions& options = {});

struct SimOptions {
  // Default: "sim-model".
  std::string fingerprint = "sim-model";
  // Default: sirllm(4, 16, 44, 0.875): evicts from the middle, and its decay
  // changes every score at a round boundary.
  PolicyConfig policy = PolicyConfig{PolicyKind::kSirLlm, 4, 44, 16, 0.875f};
  // Default: 2 layers x kv_dim 32, f32.
  int n_layers = 2;
  int kv_dim = 32;
  int dtype_bytes = 4;
  // Tokens appended per step: 1..max_step_tokens, varying by step.
  // Default: 8.
  int max_step_tokens = 8;
  // If > 0, exactly this many tokens per step instead. Default: 0.
  int step_tokens = 0;
  // Tokens of the step-0 prompt. Default: 24.
  int prompt_tokens = 24;
};

// Metadata of the simulated session `id` after step 0 (the prompt); kv empty.
SessionState SimInitialMetadata(const std::string& id,
                                const SimOptions& options);
// Metadata after step `step` (>= 1) given the state after step - 1; kv empty.
// turns == step.
SessionState SimStepMetadata(const SessionState& prev,
                             const SimOptions& options, int64_t step);
// K/V rows of `cells` of session `id` as ExportSlots lays them out
// ((layer, {K, V}, i, kv_dim)); a pure function of id and arrival.
std::string SimRows(const SessionState& state, absl::Span<const Cell> cells);
// The full state (rows included) after `step`, recomputed from step 0.
SessionState SimStateAt(const std::string& id, const SimOptions& options,
                        int64_t step);

// "" if a == b (bit-exact), else the first difference, for test messages.
std::string Difference(const SessionState& a, const SessionState& b);

}  // namespace sinkserve::memory::store_testing

#endif  // SINKSERVE_MEMORY_SESSION_TESTING_H_
