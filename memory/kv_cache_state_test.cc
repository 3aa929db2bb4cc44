// KvCache state: State() / Restore round trips, restores under another
// policy, refused states, copies, and slot recycling over many steps.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/kv_cache.h"
#include "memory/kv_cache_test_util.h"

namespace sinkserve::memory {
namespace {

using kv_cache_testing::Arrivals;
using kv_cache_testing::ExpectConsistent;
using kv_cache_testing::Make;
using kv_cache_testing::P;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

TEST(KvCacheTest, StateRestoresAnIdenticalCache) {
  KvCache cache = Make("sirllm(2,5,3,0.5)", 14);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> value(0, 9);
  auto step = [&](KvCache& c, int i, float s) {
    ASSERT_TRUE(c.Append({i, i + 1}, {s, s + 1}).ok());
    c.Trim();
    if (i % 20 == 0) c.EndRound();
  };
  for (int i = 0; i < 300; ++i) step(cache, i, static_cast<float>(value(rng)));
  const KvCacheState state = cache.State();
  absl::StatusOr<KvCache> restored = KvCache::Restore(cache.policy(), cache.capacity(), state);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->State().cells, state.cells);
  EXPECT_EQ(restored->tokens_seen(), cache.tokens_seen());
  EXPECT_EQ(restored->evicted_total(), cache.evicted_total());
  ExpectConsistent(*restored);
  // Both continue identically (free slots may be handed out in another order,
  // so compare everything but the slots).
  for (int i = 300; i < 600; ++i) {
    const float s = static_cast<float>(value(rng));
    step(cache, i, s);
    step(*restored, i, s);
    ASSERT_EQ(Arrivals(*restored), Arrivals(cache));
    for (int j = 0; j < cache.size(); ++j) {
      ASSERT_EQ(restored->cells()[j].score, cache.cells()[j].score);
      ASSERT_EQ(restored->cells()[j].token, cache.cells()[j].token);
    }
    ExpectConsistent(*restored);
  }
}

TEST(KvCacheTest, RestoreUnderASmallerPolicyThenTrim) {
  KvCache big = Make("window(8)", 9);
  ASSERT_TRUE(big.Append({1, 2, 3, 4, 5, 6, 7, 8}, {}).ok());
  absl::StatusOr<KvCache> small = KvCache::Restore(P("window(3)"), 9, big.State());
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->Trim(), 5);
  EXPECT_THAT(Arrivals(*small), ElementsAre(5, 6, 7));
  EXPECT_EQ(small->evicted_total(), 5);
  ExpectConsistent(*small);
}

TEST(KvCacheTest, RestoreRejectsBadStates) {
  auto state = [](std::vector<Cell> cells, int64_t seen) {
    KvCacheState s;
    s.cells = std::move(cells);
    s.tokens_seen = seen;
    return s;
  };
  struct Case {
    std::string name;
    KvCacheState state;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"slot out of range", state({{1, 0, 0, 4}}, 1), "outside [0, 4)"},
      {"negative slot", state({{1, 0, 0, -1}}, 1), "outside [0, 4)"},
      {"slot twice", state({{1, 0, 0, 2}, {1, 0, 1, 2}}, 2), "used twice"},
      {"arrivals not increasing", state({{1, 0, 3, 0}, {1, 0, 3, 1}}, 5), "arrivals must increase"},
      {"arrival beyond tokens_seen", state({{1, 0, 0, 0}, {1, 0, 5, 1}}, 5), "below tokens_seen 5"},
      {"NaN score", state({{1, std::nanf(""), 0, 0}}, 1), "NaN"},
      {"too many cells",
       state({{1, 0, 0, 0}, {1, 0, 1, 1}, {1, 0, 2, 2}, {1, 0, 3, 3}, {1, 0, 4, 4}}, 5),
       "exceed capacity"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<KvCache> cache = KvCache::Restore(P("full"), 4, c.state);
    ASSERT_FALSE(cache.ok()) << c.name;
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(cache.status().message(), HasSubstr(c.error)) << c.name;
  }
}

TEST(KvCacheTest, CopyIsIndependent) {
  KvCache a = Make("streaming(1,2)", 5);
  ASSERT_TRUE(a.Append({1, 2, 3}, {}).ok());
  KvCache b = a.Copy();
  ASSERT_TRUE(b.Append({4}, {}).ok());
  EXPECT_EQ(b.Trim(), 1);
  EXPECT_THAT(Arrivals(a), ElementsAre(0, 1, 2));
  EXPECT_THAT(Arrivals(b), ElementsAre(0, 2, 3));
  ExpectConsistent(a);
  ExpectConsistent(b);
}

// Random interleaving of every operation, checking slot bookkeeping after each.
TEST(KvCacheTest, SlotsAreRecycledWithoutLeaks) {
  for (const char* spec :
       {"window(6)", "streaming(2,5)", "sirllm(2,3,3,0.5)", "recompute(5)", "full"}) {
    SCOPED_TRACE(spec);
    KvCache cache = Make(spec, 12);
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> op(0, 9);
    std::uniform_int_distribution<int> len(1, 4);
    std::set<int32_t> ever_used;
    for (int iter = 0; iter < 3000; ++iter) {
      switch (op(rng)) {
        case 0:
        case 1:
        case 2:
        case 3: {
          std::vector<int32_t> tokens(len(rng), iter);
          absl::StatusOr<StepPlan> plan = cache.Reserve(tokens);
          if (!plan.ok()) {
            ASSERT_EQ(plan.status().code(), cache.reserved() ? absl::StatusCode::kFailedPrecondition
                                                             : absl::StatusCode::kResourceExhausted)
                << plan.status();
          }
          break;
        }
        case 4:
        case 5:
        case 6:
          if (cache.reserved()) {
            ASSERT_TRUE(cache.Commit({}).ok());
          }
          break;
        case 7:
          cache.Cancel();
          break;
        case 8:
          cache.Trim();
          break;
        case 9:
          // The full cache gets stuck on purpose: start over.
          if (std::string(spec) == "full" && cache.free_slots() == 0 && !cache.reserved()) {
            cache = Make(spec, 12);
          }
          break;
      }
      ExpectConsistent(cache);
      for (int32_t s : cache.context_slots()) ever_used.insert(s);
    }
    EXPECT_EQ(ever_used.size(), 12u) << "every slot gets used";
  }
}

}  // namespace
}  // namespace sinkserve::memory
