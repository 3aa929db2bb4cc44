// The perplexity loop behind `sinkserve perplexity` and `sinkserve eval`.
//
// Semantics are those of the StreamingLLM repository's eval_long_ppl.py: ids
// are fed one at a time into a Sequence under the policy; each token is
// appended to the cache, attends over the cached cells and itself, and its
// logits give nll[i] = -ln p(ids[i+1]); the Sequence then trims the cache to
// the policy's budget. Under sirllm the scores decay just before feeding ids[i]
// when i > 0 and i % round_tokens == 0. `full` with a chunk size instead runs
// consecutive chunks, each in a fresh cache, scoring every next token inside
// the chunk (the in-distribution baseline).
#ifndef SINKSERVE_SERVICE_CLI_PERPLEXITY_RUN_H_
#define SINKSERVE_SERVICE_CLI_PERPLEXITY_RUN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/sequence.h"
#include "engine/tokenizer/tokenizer.h"
#include "memory/cache_policy.h"

namespace sinkserve::cli {

struct PerplexityOptions {
  // Default: full.
  memory::PolicyConfig policy;
  // Tokens per SirLLM round: scores decay before every R-th fed token.
  // Default: 256.
  int round_tokens = 256;
  // `full` only: tokens per chunk, each chunk in a fresh cache; 0 = one cache
  // over the whole text, fed one token at a time.
  // Default: 0.
  int chunk = 0;
  // Called every `progress_every` scored tokens with (scored, total).
  // Default: none.
  std::function<void(int64_t scored, int64_t total)> on_progress;
  // Default: 256.
  int progress_every = 256;
  // For tests: called after ids[i] was fed and the cache trimmed (not in
  // chunk mode). Default: none.
  std::function<void(int64_t i, const engine::Sequence& seq)> on_fed;
};

// One scored prediction: ids[index] was fed, ids[index + 1] was the target.
struct ScoredToken {
  int64_t index = 0;
  int32_t token = 0;
  int32_t target = 0;
  double nll = 0;  // -ln p(target | context)
};

// Scores `ids` (BOS included by the caller). INVALID_ARGUMENT for fewer than
// two ids, a bad chunk size, or a chunk with a policy other than full.
absl::StatusOr<std::vector<ScoredToken>> ScoreTokens(engine::Backend* backend,
                                                     absl::Span<const int32_t> ids,
                                                     const PerplexityOptions& options);

// The ids of a text file as eval_long_ppl.py sees it: the whole file encoded
// as one text, BOS prepended once (when the vocab has one), cut to the first
// `max_tokens` ids (0 = all). NOT_FOUND / UNAVAILABLE name the file.
absl::StatusOr<std::vector<int32_t>> TokenizeFile(const engine::Tokenizer& tokenizer,
                                                  const std::string& path, int64_t max_tokens);

// exp(mean nll) of `scored[begin, end)`; 0 for an empty range.
double Perplexity(absl::Span<const ScoredToken> scored);

}  // namespace sinkserve::cli

#endif  // SINKSERVE_SERVICE_CLI_PERPLEXITY_RUN_H_
