#include "engine/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "engine/cpu/membw.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// Records every (begin, end) a ParallelFor hands out.
std::vector<std::pair<int64_t, int64_t>> Ranges(ThreadPool& pool, int64_t n, int64_t grain) {
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    std::lock_guard<std::mutex> lock(mu);
    ranges.emplace_back(begin, end);
  });
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

TEST(ThreadPoolTest, RangesCoverExactlyOnceInWholeGrains) {
  for (int threads : {1, 2, 3, 4, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 3, 7, 8, 63, 64, 65, 1000, 4099}) {
      for (int64_t grain : {1, 2, 4, 7, 64, 5000}) {
        const auto ranges = Ranges(pool, n, grain);
        SCOPED_TRACE(testing::Message() << "threads=" << threads << " n=" << n
                                        << " grain=" << grain);
        ASSERT_FALSE(ranges.empty());
        EXPECT_LE(static_cast<int>(ranges.size()), threads);
        int64_t next = 0;
        for (const auto& [begin, end] : ranges) {
          EXPECT_EQ(begin, next);
          EXPECT_LT(begin, end);
          EXPECT_EQ(begin % grain, 0);
          if (end != n) {
            EXPECT_EQ(end % grain, 0);
          }
          next = end;
        }
        EXPECT_EQ(next, n);
        // As many ranges as there are grains, up to one per thread.
        const int64_t grains = (n + grain - 1) / grain;
        EXPECT_EQ(static_cast<int64_t>(ranges.size()), std::min<int64_t>(grains, threads));
      }
    }
  }
}

TEST(ThreadPoolTest, EmptyAndNegativeRangesDoNothing) {
  ThreadPool pool(4);
  int calls = 0;
  pool.ParallelFor(0, 1, [&](int64_t, int64_t) { ++calls; });
  pool.ParallelFor(-5, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, NonPositiveGrainIsOne) {
  ThreadPool pool(2);
  const auto ranges = Ranges(pool, 10, 0);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0], std::make_pair(int64_t{0}, int64_t{5}));
  EXPECT_EQ(ranges[1], std::make_pair(int64_t{5}, int64_t{10}));
}

TEST(ThreadPoolTest, OneThreadRunsInlineOnTheCaller) {
  ThreadPool pool(1);
  EXPECT_EQ(pool.num_threads(), 1);
  const std::thread::id caller = std::this_thread::get_id();
  int calls = 0;
  pool.ParallelFor(100, 1, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 100);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPoolTest, CallerTakesTheFirstRangeAndWorkersTheRest) {
  ThreadPool pool(4);
  const std::thread::id caller = std::this_thread::get_id();
  std::mutex mu;
  std::set<std::thread::id> ids;
  pool.ParallelFor(4, 1, [&](int64_t begin, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
    if (begin == 0) {
      EXPECT_EQ(std::this_thread::get_id(), caller);
    }
  });
  EXPECT_EQ(ids.size(), 4u);
}

TEST(ThreadPoolTest, ManyBackToBackCallsSumCorrectly) {
  for (int threads : {2, 3, 5}) {
    ThreadPool pool(threads);
    std::vector<int64_t> data(777);
    for (int64_t i = 0; i < static_cast<int64_t>(data.size()); ++i) data[i] = i;
    for (int iter = 0; iter < 20000; ++iter) {
      // Alternate sizes so that some calls use fewer ranges than threads.
      const int64_t n = iter % 3 == 0 ? 1 : (iter % 3 == 1 ? 2 : 777);
      std::atomic<int64_t> sum{0};
      pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
        int64_t s = 0;
        for (int64_t i = begin; i < end; ++i) s += data[i];
        sum.fetch_add(s);
      });
      ASSERT_EQ(sum.load(), n * (n - 1) / 2) << "iter " << iter;
    }
  }
}

TEST(ThreadPoolTest, WritesOfWorkersAreVisibleAfterReturn) {
  ThreadPool pool(4);
  std::vector<int> out(4096);
  for (int iter = 0; iter < 200; ++iter) {
    pool.ParallelFor(static_cast<int64_t>(out.size()), 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = iter;
    });
    for (int v : out) ASSERT_EQ(v, iter);
  }
}

TEST(ThreadPoolTest, WakesWorkersAfterTheySleep) {
  ThreadPool pool(3);
  for (int iter = 0; iter < 3; ++iter) {
    // Longer than the spin phase, so workers are parked on the futex.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::atomic<int> ranges{0};
    pool.ParallelFor(3, 1, [&](int64_t, int64_t) { ranges.fetch_add(1); });
    EXPECT_EQ(ranges.load(), 3);
  }
}

TEST(ThreadPoolTest, DestroysWhileIdleAndRightAfterWork) {
  for (int i = 0; i < 50; ++i) {
    auto pool = std::make_unique<ThreadPool>(4);
    if (i % 2 == 0) {
      std::atomic<int> calls{0};
      pool->ParallelFor(8, 1, [&](int64_t, int64_t) { calls.fetch_add(1); });
      EXPECT_EQ(calls.load(), 4);
    } else if (i % 5 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // workers asleep
    }
    pool.reset();
  }
}

TEST(ThreadPoolTest, DefaultThreadsIsPositive) { EXPECT_GE(ThreadPool::DefaultThreads(), 1); }

TEST(ThreadPoolTest, MoreThreadsThanCoresStillWork) {
  ThreadPool pool(16);
  std::atomic<int64_t> total{0};
  for (int iter = 0; iter < 100; ++iter) {
    pool.ParallelFor(1600, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
  }
  EXPECT_EQ(total.load(), 160000);
}

// MeasureReadBandwidth is the pool's other client (and has no test file of
// its own): a small buffer must still give a sane positive number.
TEST(MemBwTest, MeasuresPositiveBandwidthOnOneAndTwoThreads) {
  ThreadPool pool(2);
  MemBwOptions options;
  options.bytes = 16 << 20;
  options.passes = 1;
  for (int threads : {1, 2}) {
    const double gbs = MeasureReadBandwidth(threads, &pool, options);
    EXPECT_GT(gbs, 0.1) << threads;
    EXPECT_LT(gbs, 10000.0) << threads;
  }
  EXPECT_GT(MeasureReadBandwidth(1, nullptr, options), 0.1);
}

}  // namespace
}  // namespace sinkserve::engine
