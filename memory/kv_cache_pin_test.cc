// KvCache pins: pinned cells are never evicted, pins count against a limit,
// cut to what arrived, unpin, and survive Restore. The policy side (which
// cells a pinned cache keeps) is tabled in cache_policy_test.cc.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/kv_cache.h"
#include "memory/kv_cache_test_util.h"

namespace sinkserve::memory {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using kv_cache_testing::Arrivals;
using kv_cache_testing::P;

// Appends `n` tokens one at a time, trimming after each, as decoding does.
void Feed(KvCache* cache, int n) {
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(cache->Append({7}, {1.0f}).ok());
    cache->Trim();
  }
}

TEST(KvCachePinTest, PinnedPromptSurvivesAndWindowShrinks) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("streaming(2,6)"), 9);
  ASSERT_TRUE(cache.ok());
  // A 4-token "system prompt" at arrivals 0..3: two are sinks anyway.
  ASSERT_TRUE(cache->PinTokens("", 0, 4, 100).ok());
  ASSERT_TRUE(cache->Append({1, 2, 3}, {}).ok());  // a chunk of the prompt
  cache->Trim();
  Feed(&*cache, 20);
  ASSERT_TRUE(cache->CheckInvariants().ok()) << cache->CheckInvariants();
  // Sinks 0, 1; pinned 2, 3 (outside the sinks: the window shrinks by 2);
  // the last 4 arrivals.
  EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 1, 2, 3, 19, 20, 21, 22));
  EXPECT_EQ(cache->size(), cache->budget());
  EXPECT_EQ(cache->pinned(), 4);
  EXPECT_EQ(cache->pinned_total(), 4);
  ASSERT_EQ(cache->pins().size(), 1u);
  EXPECT_EQ(cache->pins()[0], (Pin{"", 0, 4}));
}

TEST(KvCachePinTest, PinLimitsAndErrors) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("streaming(2,6,pinned=3)"), 9);
  ASSERT_TRUE(cache.ok());
  Feed(&*cache, 5);
  // Only tokens still to come can be pinned.
  EXPECT_EQ(cache->PinTokens("a", 4, 1, 100).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->PinTokens("a", 5, 0, 100).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(cache->PinTokens("a", 5, 2, 100).ok());
  EXPECT_EQ(cache->PinTokens("a", 7, 1, 100).code(), absl::StatusCode::kAlreadyExists);
  // Over the policy's 3 pinned cells: the message says the numbers.
  const absl::Status over = cache->PinTokens("b", 7, 2, 100);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()), HasSubstr("would pin 4, over the limit of 3"));
  // A caller's tighter limit (a server's minimum window) applies too.
  EXPECT_EQ(cache->PinTokens("b", 7, 1, 2).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(cache->PinTokens("b", 7, 1, 3).ok());
  // Overlapping an earlier pin is refused.
  EXPECT_EQ(cache->PinTokens("c", 6, 1, 100).code(), absl::StatusCode::kInvalidArgument);
  Feed(&*cache, 12);
  EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 1, 5, 6, 7, 14, 15, 16));
  ASSERT_TRUE(cache->CheckInvariants().ok()) << cache->CheckInvariants();
}

TEST(KvCachePinTest, UnpinLetsTheCellsGo) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("streaming(1,4)"), 6);
  ASSERT_TRUE(cache.ok());
  Feed(&*cache, 2);
  ASSERT_TRUE(cache->PinTokens("fact", 2, 2, 100).ok());
  Feed(&*cache, 10);
  EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 2, 3, 10, 11));
  EXPECT_EQ(cache->Unpin("nope").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(cache->Unpin("fact").ok());
  EXPECT_EQ(cache->pinned(), 0);
  EXPECT_TRUE(cache->pins().empty());
  EXPECT_EQ(cache->Trim(), 0);  // at budget: nothing to evict yet
  Feed(&*cache, 1);
  // The unpinned cells are now the oldest of the window: they go first.
  EXPECT_THAT(Arrivals(*cache), ElementsAre(0, 3, 10, 11, 12));
  ASSERT_TRUE(cache->CheckInvariants().ok());
  // The label is free again.
  EXPECT_TRUE(cache->PinTokens("fact", 13, 1, 100).ok());
}

TEST(KvCachePinTest, ClosePinsDropsTokensThatNeverCame) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("streaming(1,8)"), 12);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(cache->PinTokens("t1", 0, 5, 100).ok());
  ASSERT_TRUE(cache->Append({1, 2, 3}, {}).ok());  // the turn stopped here
  // State() is complete on its own: the pin is cut at what arrived.
  EXPECT_EQ(cache->State().pins, (std::vector<Pin>{{"t1", 0, 3}}));
  EXPECT_EQ(cache->ClosePins(), 2);
  EXPECT_EQ(cache->pins(), (std::vector<Pin>{{"t1", 0, 3}}));
  ASSERT_TRUE(cache->PinTokens("t2", 3, 1, 100).ok());
  EXPECT_EQ(cache->ClosePins(), 1);  // none of t2 arrived: dropped
  EXPECT_EQ(cache->pins().size(), 1u);
  ASSERT_TRUE(cache->CheckInvariants().ok());
}

TEST(KvCachePinTest, RestoreKeepsPinsAndRefusesBrokenOnes) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("sirllm(1,2,6)"), 10);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(cache->PinTokens("", 0, 3, 100).ok());
  Feed(&*cache, 3);
  ASSERT_TRUE(cache->PinTokens("t", 6, 1, 100).ok());
  Feed(&*cache, 12);
  const KvCacheState state = cache->State();
  absl::StatusOr<KvCache> restored = KvCache::Restore(P("sirllm(1,2,6)"), 10, state);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->State().cells, state.cells);
  EXPECT_EQ(restored->pins(), state.pins);
  EXPECT_EQ(restored->pinned(), 4);
  // Cell flags are rebuilt from the pins, whatever the input says.
  KvCacheState unflagged = state;
  for (Cell& c : unflagged.cells) c.pinned = false;
  restored = KvCache::Restore(P("sirllm(1,2,6)"), 10, unflagged);
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->State().cells, state.cells);
  // A pin whose cell is gone, overlapping pins, a pin past tokens_seen.
  for (const std::vector<Pin>& bad :
       {std::vector<Pin>{{"", 0, 3}, {"t", 6, 8}},
        std::vector<Pin>{{"", 0, 3}, {"t", 2, 3}},
        std::vector<Pin>{{"", 0, 3}, {"t", 6, 7}, {"u", 15, 99}},
        std::vector<Pin>{{"", 0, 3}, {"", 6, 7}}}) {
    KvCacheState broken = state;
    broken.pins = bad;
    EXPECT_EQ(KvCache::Restore(P("sirllm(1,2,6)"), 10, broken).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(KvCachePinTest, RecomputePinsNothing) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P("recompute(4)"), 6);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(cache->PinTokens("x", 0, 1, 100).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace sinkserve::memory
