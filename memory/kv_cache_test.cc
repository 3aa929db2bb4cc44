#include "memory/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/kv_cache_test_util.h"

namespace sinkserve::memory {
namespace {

using kv_cache_testing::Arrivals;
using kv_cache_testing::ExpectConsistent;
using kv_cache_testing::Iota32;
using kv_cache_testing::Iota64;
using kv_cache_testing::Make;
using kv_cache_testing::P;
using kv_cache_testing::Slots;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(KvCacheTest, MinCapacity) {
  EXPECT_EQ(KvCache::MinCapacity(P("full"), 8), 8);
  EXPECT_EQ(KvCache::MinCapacity(P("window(10)"), 1), 11);
  EXPECT_EQ(KvCache::MinCapacity(P("streaming(4,252)"), 64), 320);
  EXPECT_EQ(KvCache::MinCapacity(P("sirllm(4,64,188,0.9)"), 1), 257);
  EXPECT_EQ(KvCache::MinCapacity(P("recompute(32)"), 1), 33);
}

TEST(KvCacheTest, CreateChecksPolicyAndCapacity) {
  struct Case {
    PolicyConfig policy;
    int capacity;
    std::string error;  // "" = ok
  };
  PolicyConfig bad_window = P("window(3)");
  bad_window.window = 0;
  const std::vector<Case> cases = {
      {P("full"), 1, ""},
      {P("full"), 0, "must be in [1, "},
      {P("window(3)"), 4, ""},
      {P("window(3)"), 3, "must hold the budget plus the largest step"},
      {P("streaming(4,4)"), 8, "must be in [9, "},
      {P("sirllm(1,2,3,0.5)"), 7, ""},
      {P("sirllm(1,2,3,0.5)"), 6, "must be in [7, "},
      {P("full"), 1 << 29, "must be in [1, 268435456]"},
      {bad_window, 100, "window must be in [1, "},
  };
  for (const Case& c : cases) {
    absl::StatusOr<KvCache> cache = KvCache::Create(c.policy, c.capacity);
    if (c.error.empty()) {
      ASSERT_TRUE(cache.ok()) << c.policy.ToString() << ": " << cache.status();
      EXPECT_EQ(cache->capacity(), c.capacity);
      EXPECT_EQ(cache->free_slots(), c.capacity);
      EXPECT_TRUE(cache->empty());
    } else {
      ASSERT_FALSE(cache.ok()) << c.policy.ToString() << " " << c.capacity;
      EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(cache.status().message(), HasSubstr(c.error));
    }
  }
}

TEST(KvCacheTest, ReserveHandsOutSlotsAndPositions) {
  KvCache cache = Make("streaming(2,3)", 7);
  absl::StatusOr<StepPlan> plan = cache.Reserve({10, 11});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->context_slots, IsEmpty());
  EXPECT_THAT(plan->context_positions, IsEmpty());
  EXPECT_THAT(plan->tokens, ElementsAre(10, 11));
  EXPECT_THAT(plan->token_slots, ElementsAre(0, 1));
  EXPECT_THAT(plan->token_positions, ElementsAre(0, 1));
  EXPECT_EQ(plan->recomputed, 0);
  EXPECT_TRUE(cache.reserved());
  EXPECT_EQ(cache.free_slots(), 5);
  ASSERT_TRUE(cache.Commit({1.5f, 2.5f}).ok());
  EXPECT_FALSE(cache.reserved());

  plan = cache.Reserve({12});
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT(plan->context_slots, ElementsAre(0, 1));
  EXPECT_THAT(plan->context_positions, ElementsAre(0, 1));
  EXPECT_THAT(plan->token_slots, ElementsAre(2));
  EXPECT_THAT(plan->token_positions, ElementsAre(2));
  ASSERT_TRUE(cache.Commit({3.5f}).ok());

  ASSERT_EQ(cache.size(), 3);
  const absl::Span<const Cell> cells = cache.cells();
  EXPECT_EQ(cells[0], (Cell{10, kInf, 0, 0}));  // the first cell scores +inf
  EXPECT_EQ(cells[1], (Cell{11, 2.5f, 1, 1}));
  EXPECT_EQ(cells[2], (Cell{12, 3.5f, 2, 2}));
  EXPECT_EQ(cache.tokens_seen(), 3);
  ExpectConsistent(cache);
}

TEST(KvCacheTest, ReservationErrors) {
  KvCache cache = Make("window(4)", 6);
  EXPECT_EQ(cache.Reserve({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Commit({}).code(), absl::StatusCode::kFailedPrecondition);

  ASSERT_TRUE(cache.Reserve({1, 2}).ok());
  EXPECT_EQ(cache.Reserve({3}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A bad Commit leaves the reservation pending and the cache unchanged.
  EXPECT_EQ(cache.Commit({1.0f}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Commit({1.0f, std::nanf("")}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(cache.reserved());
  EXPECT_EQ(cache.size(), 0);
  ExpectConsistent(cache);

  // Cancel gives the slots back: the next Reserve gets the same ones.
  cache.Cancel();
  EXPECT_FALSE(cache.reserved());
  EXPECT_EQ(cache.free_slots(), 6);
  ExpectConsistent(cache);
  absl::StatusOr<StepPlan> plan = cache.Reserve({1, 2});
  ASSERT_TRUE(plan.ok());
  EXPECT_THAT(plan->token_slots, ElementsAre(0, 1));
  ASSERT_TRUE(cache.Commit({}).ok());  // scores unknown yet: 0
  EXPECT_EQ(cache.cells()[1].score, 0.0f);
  EXPECT_EQ(cache.tokens_seen(), 2);

  EXPECT_EQ(cache.Append({1, 2, 3}, {1.0f}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Append({1}, {std::nanf("")}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(cache.reserved())
      << "a failed Append must not leave a reservation";
  ExpectConsistent(cache);
}

TEST(KvCacheTest, FullNeverEvictsAndRunsOut) {
  KvCache cache = Make("full", 4);
  EXPECT_EQ(cache.budget(), 4);
  ASSERT_TRUE(cache.Append({1, 2, 3}, {}).ok());
  EXPECT_EQ(cache.Trim(), 0);
  const absl::Status too_many = cache.Reserve({4, 5}).status();
  EXPECT_EQ(too_many.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_many.message(), HasSubstr("never evicts"));
  ASSERT_TRUE(cache.Append({4}, {}).ok());
  EXPECT_EQ(cache.Trim(), 0);
  EXPECT_EQ(cache.Append({5}, {}).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.Trim(), 0);
  EXPECT_THAT(Arrivals(cache), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(cache.evicted_total(), 0);
  ExpectConsistent(cache);
}

TEST(KvCacheTest, BoundedStepLimitIsCapacityMinusBudget) {
  // streaming(2,3), capacity 7: after every Trim a step of 2 fits, 3 never.
  KvCache cache = Make("streaming(2,3)", 7);
  for (int step = 0; step < 20; ++step) {
    const int free = cache.free_slots();
    const absl::Status too_big = cache.Reserve({1, 2, 3}).status();
    if (free < 3) {
      EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
      EXPECT_THAT(too_big.message(), HasSubstr("at most 2 tokens"));
    } else {
      cache.Cancel();
    }
    ASSERT_TRUE(cache.Append({7, 8}, {}).ok()) << "step " << step;
    cache.Trim();
    EXPECT_LE(cache.size(), 5);
    EXPECT_GE(cache.free_slots(), 2);
  }
  ExpectConsistent(cache);
}

struct LongRunCase {
  std::string policy;
  int sinks;               // kept at the front (0 for window and recompute)
  int window;              // kept at the back
  std::vector<int> steps;  // step sizes, cycled
};

// 10,000 tokens through window / streaming / recompute: after each Trim the
// kept arrivals are exactly [0, min(S, t)) + [max(S, t - W), t).
TEST(KvCacheTest, WindowAndStreamingOverTenThousandTokens) {
  const std::vector<LongRunCase> cases = {
      {"window(1)", 0, 1, {1}},
      {"window(16)", 0, 16, {1}},
      {"window(16)", 0, 16, {1, 5, 2, 16, 3}},
      {"streaming(4,12)", 4, 12, {1}},
      {"streaming(4,12)", 4, 12, {7, 1, 1, 3, 16}},
      {"streaming(1,1)", 1, 1, {1, 2}},
      {"streaming(0,5)", 0, 5, {1}},
      {"streaming(4,252)", 4, 252, {64, 1, 1, 1}},
      {"recompute(8)", 0, 8, {1}},
  };
  constexpr int64_t kTokens = 10000;
  for (const LongRunCase& c : cases) {
    SCOPED_TRACE(c.policy);
    const int max_step = *std::max_element(c.steps.begin(), c.steps.end());
    KvCache cache = Make(c.policy, c.sinks + c.window + max_step);
    int64_t t = 0;
    int64_t evicted = 0;
    for (size_t i = 0; t < kTokens; ++i) {
      const int n = static_cast<int>(
          std::min<int64_t>(c.steps[i % c.steps.size()], kTokens - t));
      std::vector<int32_t> tokens(n);
      std::vector<float> scores(n);
      for (int j = 0; j < n; ++j) {
        tokens[j] = static_cast<int32_t>((t + j) % 512);
        scores[j] = static_cast<float>((t + j) % 13);
      }
      ASSERT_TRUE(cache.Append(tokens, scores).ok()) << "t=" << t;
      t += n;
      evicted += cache.Trim();

      std::vector<int64_t> want = Iota64(0, std::min<int64_t>(c.sinks, t));
      const std::vector<int64_t> recent =
          Iota64(std::max<int64_t>(c.sinks, t - c.window), t);
      want.insert(want.end(), recent.begin(), recent.end());
      ASSERT_EQ(Arrivals(cache), want) << "t=" << t;
      ASSERT_LE(cache.size(), cache.budget());
      ASSERT_EQ(cache.evicted_total(), evicted);
      ASSERT_EQ(cache.evicted_total(), t - cache.size());
      for (const Cell& cell : cache.cells()) {
        ASSERT_EQ(cell.token, cell.arrival % 512);
      }
      if (t % 997 < static_cast<int64_t>(max_step)) ExpectConsistent(cache);
    }
    EXPECT_EQ(cache.tokens_seen(), kTokens);
    ExpectConsistent(cache);
  }
}

// The cache's Trim (with its fast paths) does exactly what the pure policy
// says, for every policy, random step sizes and scores with many ties.
TEST(KvCacheTest, TrimEqualsThePolicyFunction) {
  const std::vector<std::string> policies = {
      "window(5)",          "streaming(3,4)",
      "streaming(0,2)",     "recompute(6)",
      "sirllm(2,3,2,0.5)",  "sirllm(0,1,1,1)",
      "sirllm(4,16,8,0.9)", "full"};
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> score(0, 5);
  for (const std::string& spec : policies) {
    SCOPED_TRACE(spec);
    const PolicyConfig policy = P(spec);
    const int max_step = 4;
    KvCache cache =
        Make(spec, spec == "full" ? 3000 : *policy.Budget() + max_step);
    std::uniform_int_distribution<int> step(1, max_step);
    for (int iter = 0; iter < 600; ++iter) {
      const int n = step(rng);
      std::vector<int32_t> tokens(n, iter);
      std::vector<float> scores(n);
      for (float& s : scores) s = static_cast<float>(score(rng));
      ASSERT_TRUE(cache.Append(tokens, scores).ok());
      if (iter % 50 == 49) cache.EndRound();

      const std::vector<Cell> before(cache.cells().begin(),
                                     cache.cells().end());
      const std::vector<int32_t> kept = SelectKept(before, policy);
      std::vector<Cell> want;
      for (int32_t k : kept) want.push_back(before[k]);
      const int evicted = cache.Trim();
      ASSERT_EQ(evicted, static_cast<int>(before.size() - kept.size()));
      ASSERT_EQ(std::vector<Cell>(cache.cells().begin(), cache.cells().end()),
                want)
          << "iter " << iter;
      ASSERT_LE(cache.size(), cache.budget());
      ExpectConsistent(cache);
    }
  }
}

TEST(KvCacheTest, BelowBudgetEveryPolicyKeepsEverything) {
  for (const char* spec :
       {"window(9)", "streaming(4,5)", "sirllm(2,3,4,0.5)", "recompute(9)"}) {
    KvCache cache = Make(spec, 10);
    KvCache full = Make("full", 10);
    for (int i = 0; i < 9; ++i) {
      ASSERT_TRUE(cache.Append({i}, {static_cast<float>(i % 3)}).ok());
      ASSERT_TRUE(full.Append({i}, {static_cast<float>(i % 3)}).ok());
      EXPECT_EQ(cache.Trim(), 0) << spec;
      EXPECT_EQ(full.Trim(), 0);
      EXPECT_EQ(cache.State().cells, full.State().cells) << spec;
    }
    ASSERT_TRUE(cache.Append({9}, {}).ok());
    EXPECT_EQ(cache.Trim(), 1) << spec << ": one past the budget";
  }
}

TEST(KvCacheTest, SinksAreAlwaysKept) {
  for (const char* spec :
       {"streaming(4,8)", "sirllm(4,4,4,0.5)", "sirllm(3,1,1,1)"}) {
    KvCache cache = Make(spec, 20);
    const int sinks = P(spec).sinks;
    for (int i = 0; i < 2000; ++i) {
      // Later tokens score higher than anything before them.
      ASSERT_TRUE(cache.Append({i}, {static_cast<float>(i)}).ok());
      cache.Trim();
      for (int s = 0; s < std::min(i + 1, sinks); ++s) {
        ASSERT_EQ(cache.cells()[s].arrival, s) << spec << " i=" << i;
      }
    }
  }
}

TEST(KvCacheTest, SirLlmAlwaysKeepsBos) {
  // No sinks: only the +inf score protects the first cell.
  KvCache cache = Make("sirllm(0,1,1,0.5)", 3);
  ASSERT_TRUE(cache.Append({1}, {0.25f}).ok());  // the given score is ignored
  EXPECT_EQ(cache.cells()[0].score, kInf);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(cache.Append({2}, {3e38f}).ok());
    cache.Trim();
    if (i % 10 == 0) cache.EndRound();
    ASSERT_EQ(cache.cells()[0].arrival, 0);
    ASSERT_EQ(cache.cells()[0].score, kInf);
  }
  ASSERT_TRUE(cache.SetScore(0, 1.0f).ok());
  EXPECT_EQ(cache.cells()[0].score, kInf) << "SetScore must not demote BOS";
  ExpectConsistent(cache);
}

TEST(KvCacheTest, SirLlmTiesKeepTheOlder) {
  KvCache cache = Make("sirllm(1,2,1,1)", 5);
  ASSERT_TRUE(cache.Append({0, 1, 2, 3, 4}, {0, 5, 5, 5, 5}).ok());
  EXPECT_EQ(cache.Trim(), 1);
  EXPECT_THAT(Arrivals(cache), ElementsAre(0, 1, 2, 4));
  ASSERT_TRUE(cache.Append({5}, {5}).ok());
  EXPECT_EQ(cache.Trim(), 1);
  EXPECT_THAT(Arrivals(cache), ElementsAre(0, 1, 2, 5));
}

TEST(KvCacheTest, DecayMultipliesScoresPerRound) {
  struct Case {
    float decay;
    int rounds;
  };
  const std::vector<float> scores = {kInf, 0.0f, 0.5f, 3.0f, 17.25f, 1e-3f};
  for (const Case& c : std::vector<Case>{
           {0.5f, 1}, {0.5f, 10}, {0.9f, 7}, {1.0f, 100}, {0.99f, 250}}) {
    PolicyConfig policy = P("sirllm(1,8,1,1)");
    policy.decay = c.decay;
    absl::StatusOr<KvCache> made = KvCache::Create(policy, 11);
    ASSERT_TRUE(made.ok());
    KvCache& cache = *made;
    ASSERT_TRUE(cache.Append({1, 2, 3, 4, 5, 6}, scores).ok());
    for (int k = 0; k < c.rounds; ++k) cache.EndRound();
    for (size_t i = 0; i < scores.size(); ++i) {
      const float got = cache.cells()[i].score;
      const double want =
          static_cast<double>(scores[i]) * std::pow(double{c.decay}, c.rounds);
      if (std::isinf(want)) {
        EXPECT_EQ(got, kInf) << "+inf must stay +inf";
      } else if (c.decay == 0.5f || c.decay == 1.0f) {
        EXPECT_EQ(got, want) << "powers of two are exact";
      } else {
        // One float rounding per round.
        EXPECT_NEAR(got, want, std::abs(want) * 1e-7 * (c.rounds + 1))
            << "decay " << c.decay << " rounds " << c.rounds;
      }
    }
  }
}

TEST(KvCacheTest, DecayRejectsBadFactors) {
  KvCache cache = Make("sirllm(1,1,1,0.5)", 4);
  ASSERT_TRUE(cache.Append({1, 2}, {1, 8}).ok());
  for (float bad : {0.0f, -0.5f, 1.5f, std::nanf(""), kInf}) {
    EXPECT_EQ(cache.Decay(bad).code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(cache.cells()[1].score, 8.0f);
  ASSERT_TRUE(cache.Decay(0.25f).ok());
  EXPECT_EQ(cache.cells()[1].score, 2.0f);
}

TEST(KvCacheTest, DecayLetsNewerSurprisesWin) {
  // sirllm(1,1,1): one entropy cell. A (score 10) decays to 1.25 after three
  // rounds at 0.5, so B (score 2) takes its place; without decay A stays.
  for (const float decay : {0.5f, 1.0f}) {
    PolicyConfig policy = P("sirllm(1,1,1,1)");
    policy.decay = decay;
    absl::StatusOr<KvCache> cache = KvCache::Create(policy, 4);
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(cache->Append({100, 101}, {0, 10}).ok());  // BOS, A
    for (int k = 0; k < 3; ++k) cache->EndRound();
    ASSERT_TRUE(cache->Append({102}, {2}).ok());  // B
    ASSERT_TRUE(cache->Append({103}, {0}).ok());  // C
    EXPECT_EQ(cache->Trim(), 1);
    if (decay == 0.5f) {
      EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 2, 3));
    } else {
      EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 1, 3));
    }
  }
}

TEST(KvCacheTest, SetScoreByArrival) {
  KvCache cache = Make("window(3)", 4);
  ASSERT_TRUE(cache.Append({10, 11, 12, 13}, {}).ok());
  EXPECT_EQ(cache.Trim(), 1);  // arrival 0 gone
  ASSERT_TRUE(cache.SetScore(2, 2.5f).ok());
  EXPECT_EQ(cache.cells()[1].score, 2.5f);
  EXPECT_EQ(cache.SetScore(0, 1.0f).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache.SetScore(4, 1.0f).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.SetScore(-1, 1.0f).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.SetScore(3, std::nanf("")).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, LateScoresSteerSirLlm) {
  // Scores filled in after Commit (as when a token's surprisal comes from a
  // later step) count at the next Trim.
  KvCache cache = Make("sirllm(1,1,1,1)", 4);
  ASSERT_TRUE(cache.Append({0, 1, 2}, {}).ok());
  ASSERT_TRUE(cache.SetScore(1, 1.0f).ok());
  ASSERT_TRUE(cache.SetScore(2, 4.0f).ok());
  ASSERT_TRUE(cache.Append({3}, {}).ok());
  EXPECT_EQ(cache.Trim(), 1);
  EXPECT_THAT(Arrivals(cache), ElementsAre(0, 2, 3));
}

TEST(KvCacheTest, RecomputeReencodesTheLastWindow) {
  // recompute(4): each step runs the last 3 cached tokens + the new one at
  // positions 0..3, with no cached context.
  KvCache cache = Make("recompute(4)", 5);
  for (int32_t t = 0; t < 12; ++t) {
    const std::vector<int32_t> cached_slots = Slots(cache);
    const int m = std::min(cache.size(), 3);
    absl::StatusOr<StepPlan> plan = cache.Reserve({100 + t});
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_THAT(plan->context_slots, IsEmpty());
    EXPECT_THAT(plan->context_positions, IsEmpty());
    EXPECT_EQ(plan->recomputed, m);
    std::vector<int32_t> want_tokens;
    for (int32_t u = t - m; u <= t; ++u) want_tokens.push_back(100 + u);
    EXPECT_THAT(plan->tokens, ElementsAreArray(want_tokens)) << "t=" << t;
    EXPECT_THAT(plan->token_positions, ElementsAreArray(Iota32(0, m + 1)));
    ASSERT_EQ(plan->token_slots.size(), static_cast<size_t>(m + 1));
    for (int i = 0; i < m; ++i) {
      EXPECT_EQ(plan->token_slots[i],
                cached_slots[cached_slots.size() - m + i]);
    }
    const std::set<int32_t> distinct(plan->token_slots.begin(),
                                     plan->token_slots.end());
    EXPECT_EQ(distinct.size(), plan->token_slots.size());
    ASSERT_TRUE(cache.Commit({}).ok());
    cache.Trim();
    EXPECT_EQ(cache.size(), std::min(t + 1, 4));
    ExpectConsistent(cache);
  }
}

}  // namespace
}  // namespace sinkserve::memory
