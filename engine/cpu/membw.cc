#include "engine/cpu/membw.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

// Highway compiles the summing loop once per instruction set (see
// vec_ops.cc for the pattern).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "engine/cpu/membw.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace sinkserve::engine {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of the 64-bit words of p (words: a multiple of 4 vectors). Four
// accumulators keep several loads in flight per core.
uint64_t SumWords(const uint64_t* p, int64_t words) {
  const hn::ScalableTag<uint64_t> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  for (int64_t i = 0; i + 4 * N <= words; i += 4 * N) {
    s0 = hn::Add(s0, hn::Load(d, p + i));
    s1 = hn::Add(s1, hn::Load(d, p + i + N));
    s2 = hn::Add(s2, hn::Load(d, p + i + 2 * N));
    s3 = hn::Add(s3, hn::Load(d, p + i + 3 * N));
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
}

}  // namespace HWY_NAMESPACE
}  // namespace sinkserve::engine
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace sinkserve::engine {
namespace {

HWY_EXPORT(SumWords);

constexpr int64_t kMinBytes = int64_t{512} << 20;
constexpr int64_t kMaxBytes = int64_t{1} << 30;
constexpr int64_t kAlign = 4096;   // and a multiple of any vector size
constexpr int64_t kChunk = 1 << 16;  // bytes per thread-range unit

int64_t AutoBytes() {
  int64_t l3 = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
  l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  return std::clamp<int64_t>(8 * l3, kMinBytes, kMaxBytes);
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

double MeasureReadBandwidth(int threads, ThreadPool* pool, const MemBwOptions& options) {
  const int64_t bytes =
      (options.bytes > 0 ? options.bytes : AutoBytes()) / kChunk * kChunk + kChunk;
  std::unique_ptr<void, FreeDeleter> mem(std::aligned_alloc(kAlign, bytes));
  if (mem == nullptr) return 0.0;
  uint8_t* buf = static_cast<uint8_t*>(mem.get());
  const int64_t chunks = bytes / kChunk;
  threads = pool == nullptr ? 1 : std::clamp(threads, 1, pool->num_threads());

  // Each thread reads the same part in every pass; it also touches it first,
  // so on NUMA machines its pages are local.
  const int64_t per_thread = (chunks + threads - 1) / threads;
  const auto run = [&](auto&& body) {
    if (threads == 1) {
      body(int64_t{0}, chunks);
    } else {
      pool->ParallelFor(chunks, per_thread,
                        [&](int64_t begin, int64_t end) { body(begin, end); });
    }
  };
  run([&](int64_t begin, int64_t end) {
    std::memset(buf + begin * kChunk, 1, (end - begin) * kChunk);
  });

  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (int pass = 0; pass <= std::max(options.passes, 1); ++pass) {
    const auto start = std::chrono::steady_clock::now();
    run([&](int64_t begin, int64_t end) {
      const uint64_t sum = HWY_DYNAMIC_DISPATCH(SumWords)(
          reinterpret_cast<const uint64_t*>(buf + begin * kChunk),
          (end - begin) * kChunk / static_cast<int64_t>(sizeof(uint64_t)));
      sink.fetch_add(sum, std::memory_order_relaxed);
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (pass > 0 && seconds > 0) best = std::max(best, static_cast<double>(bytes) / seconds / 1e9);
  }
  // Every byte is 1, so the sum is known: checking it keeps the reads alive.
  const uint64_t expected = 0x0101010101010101ull * (bytes / 8) * (std::max(options.passes, 1) + 1);
  return sink.load() == expected ? best : 0.0;
}

double MeasureReadBandwidth(int threads, ThreadPool* pool) {
  return MeasureReadBandwidth(threads, pool, MemBwOptions());
}

}  // namespace sinkserve::engine
#endif  // HWY_ONCE
