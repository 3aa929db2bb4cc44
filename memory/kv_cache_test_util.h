// Helpers shared by the KvCache tests: parse a policy, make a cache, read
// its cells, check its slot bookkeeping. Test-only (gtest assertions).
#ifndef SINKSERVE_MEMORY_KV_CACHE_TEST_UTIL_H_
#define SINKSERVE_MEMORY_KV_CACHE_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/kv_cache.h"

namespace sinkserve::memory::kv_cache_testing {

using ::testing::ElementsAreArray;

inline PolicyConfig P(const std::string& spec) {
  absl::StatusOr<PolicyConfig> config = PolicyConfig::Parse(spec);
  EXPECT_TRUE(config.ok()) << spec << ": " << config.status();
  return *config;
}

inline KvCache Make(const std::string& spec, int capacity) {
  absl::StatusOr<KvCache> cache = KvCache::Create(P(spec), capacity);
  EXPECT_TRUE(cache.ok()) << spec << ": " << cache.status();
  return *std::move(cache);
}

inline std::vector<int64_t> Arrivals(const KvCache& cache) {
  std::vector<int64_t> out;
  for (const Cell& c : cache.cells()) out.push_back(c.arrival);
  return out;
}

inline std::vector<int32_t> Slots(const KvCache& cache) {
  std::vector<int32_t> out;
  for (const Cell& c : cache.cells()) out.push_back(c.slot);
  return out;
}

inline std::vector<int64_t> Iota64(int64_t begin, int64_t end) {
  std::vector<int64_t> v;
  for (int64_t i = begin; i < end; ++i) v.push_back(i);
  return v;
}

inline std::vector<int32_t> Iota32(int begin, int end) {
  std::vector<int32_t> v(std::max(0, end - begin));
  std::iota(v.begin(), v.end(), begin);
  return v;
}

// The backend-facing arrays agree with the cell metadata, and every slot is
// accounted for exactly once: by a cell or by the free list (checked here
// without the cache's own CheckInvariants, and with it).
inline void ExpectConsistent(const KvCache& cache) {
  ASSERT_TRUE(cache.CheckInvariants().ok()) << cache.CheckInvariants();
  EXPECT_THAT(cache.context_slots(), ElementsAreArray(Slots(cache)));
  EXPECT_THAT(cache.context_positions(), ElementsAreArray(Iota32(0, cache.size())));
  const std::vector<int32_t> slots = Slots(cache);
  const std::set<int32_t> distinct(slots.begin(), slots.end());
  ASSERT_EQ(distinct.size(), slots.size()) << "a slot holds two cells";
  for (int32_t s : slots) {
    ASSERT_GE(s, 0);
    ASSERT_LT(s, cache.capacity());
  }
  if (!cache.reserved()) {
    ASSERT_EQ(cache.size() + cache.free_slots(), cache.capacity()) << "slots leaked";
  }
}

}  // namespace sinkserve::memory::kv_cache_testing

#endif  // SINKSERVE_MEMORY_KV_CACHE_TEST_UTIL_H_
