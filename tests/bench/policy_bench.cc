// Cost of a cache policy's bookkeeping per decoded token (Google Benchmark):
// KvCache Append + Trim of one token at a full cache, for streaming and
// SirLLM at a few budgets, without pins and with pinned cells (a pinned
// system prompt of 64 cells and a pinned turn in the middle). Pins turn the
// O(evicted) eviction into one pass over the cells; this measures what that
// costs next to a forward pass (microseconds per token on any model).
//
//   policy_bench [benchmark flags]
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "memory/kv_cache.h"

namespace sinkserve::memory {
namespace {

// range(0): window cells; range(1): 1 = SirLLM (entropy = window), else
// streaming; range(2): pinned cells (0, or a 64-cell prompt + 16-cell turn).
void BM_AppendTrim(benchmark::State& state) {
  const int window = static_cast<int>(state.range(0));
  const bool sirllm = state.range(1) == 1;
  const bool pins = state.range(2) == 1;
  PolicyConfig policy;
  policy.kind = sirllm ? PolicyKind::kSirLlm : PolicyKind::kStreaming;
  policy.sinks = 4;
  policy.window = window;
  policy.entropy = sirllm ? window : 0;
  const int budget = *policy.Budget();
  absl::StatusOr<KvCache> cache = KvCache::Create(policy, budget + 1);
  if (!cache.ok()) {
    state.SkipWithError(std::string(cache.status().message()).c_str());
    return;
  }
  if (pins && !cache->PinTokens("", 0, 64, policy.PinLimit()).ok()) {
    state.SkipWithError("pin");
    return;
  }
  uint32_t x = 12345;
  auto score = [&x] {
    x = x * 1664525u + 1013904223u;
    return static_cast<float>(x >> 8) / (1u << 24) * 10.0f;
  };
  for (int i = 0; i < 4 * budget; ++i) {
    if (pins && i == 2 * budget) (void)cache->PinTokens("turn", cache->tokens_seen(), 16, 1 << 20);
    const int32_t token = i % 500;
    const float s = score();
    (void)cache->Append({&token, 1}, {&s, 1});
    cache->Trim();
  }
  for (auto _ : state) {
    const int32_t token = 7;
    const float s = score();
    (void)cache->Append({&token, 1}, {&s, 1});
    benchmark::DoNotOptimize(cache->Trim());
  }
  state.SetLabel(absl::StrCat(policy.ToString(), pins ? " +80 pinned" : ""));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendTrim)
    ->ArgsProduct({{252, 1020, 4092}, {0, 1}, {0, 1}})
    ->ArgNames({"window", "sirllm", "pinned"});

}  // namespace
}  // namespace sinkserve::memory

BENCHMARK_MAIN();
