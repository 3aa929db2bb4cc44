// Picks the next token from logits: penalties, truncation filters,
// temperature and a seeded random draw, in llama.cpp's default order.
//
// Pipeline: repetition / presence / frequency penalties over the last
// `penalty_last_n` accepted tokens -> (temperature 0: argmax) -> top-k ->
// top-p -> min-p -> temperature -> draw. As in llama.cpp the filters see the
// untempered distribution, so temperature only reshapes the kept set.
//
// The random state and the penalty window are the sampler's whole state;
// SaveState()/RestoreState() carry them as bytes so a persisted session
// continues with exactly the tokens it would have produced.
#ifndef SINKSERVE_ENGINE_SAMPLER_H_
#define SINKSERVE_ENGINE_SAMPLER_H_

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sinkserve::engine {

struct SamplerOptions {
  // Softmax temperature; <= 0 picks the argmax (greedy, no randomness).
  // Default: 0.8.
  float temperature = 0.8f;
  // Keep the k most likely tokens; <= 0 keeps all.
  // Default: 40.
  int top_k = 40;
  // Keep the smallest set of most likely tokens whose probability sums to at
  // least top_p; >= 1 disables.
  // Default: 0.95.
  float top_p = 0.95f;
  // Drop tokens less likely than min_p times the most likely one; <= 0
  // disables.
  // Default: 0.05.
  float min_p = 0.05f;
  // Divides positive logits (multiplies negative ones) of tokens seen in the
  // window; 1 disables.
  // Default: 1.0 (as llama.cpp since 2024).
  float repeat_penalty = 1.0f;
  // Subtracted once from the logit of every token seen in the window.
  // Default: 0.
  float presence_penalty = 0.0f;
  // Subtracted per occurrence in the window.
  // Default: 0.
  float frequency_penalty = 0.0f;
  // How many recent tokens the penalties look at; 0 disables them.
  // Default: 64.
  int penalty_last_n = 64;
  // Seed of the random draw.
  // Default: 0 (callers wanting variety pass a random seed).
  uint64_t seed = 0;
};

// A candidate token after filtering: id and probability (summing to 1 over
// the kept set).
struct TokenProb {
  int32_t id;
  float p;
};

// xoshiro256** (Blackman & Vigna): 32 bytes of state, fast, good quality,
// and trivially serialisable (std::mt19937_64 carries 2.5 KB).
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed);  // state expanded by SplitMix64
  uint64_t Next();
  double Uniform();  // [0, 1) with 53 random bits
  uint64_t state[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);

  const SamplerOptions& options() const { return options_; }

  // Picks a token from `logits` (vocab). Does not Accept() it.
  int32_t Sample(absl::Span<const float> logits);

  // The distribution Sample() draws from: kept tokens, most likely first,
  // probabilities summing to 1. Greedy gives the argmax alone with p = 1.
  // Valid until the next call.
  absl::Span<const TokenProb> Distribution(absl::Span<const float> logits);

  // Records a token (prompt or generated) in the penalty window.
  void Accept(int32_t token);
  void Reset();  // clears the window; the random state stays

  // Random state + window, as versioned little-endian bytes.
  std::string SaveState() const;
  // INVALID_ARGUMENT (state unchanged) unless `bytes` came from SaveState.
  absl::Status RestoreState(std::string_view bytes);

 private:
  // Copies logits into candidates_ with penalties applied.
  void Penalize(absl::Span<const float> logits);

  SamplerOptions options_;
  Xoshiro256 rng_;
  std::deque<int32_t> window_;  // last penalty_last_n accepted tokens, oldest first
  struct Candidate {
    int32_t id;
    float logit;
  };
  std::vector<Candidate> candidates_;  // (vocab), reused
  std::vector<TokenProb> distribution_;
  std::vector<int32_t> counts_;        // (vocab) occurrences in the window, scratch
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_SAMPLER_H_
