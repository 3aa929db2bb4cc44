#include "engine/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <condition_variable>
#include <mutex>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace sinkserve::engine {
namespace {

// The epoch word packs a sequence number (high 24 bits) with the number of
// ranges of the job it announces (low 8 bits), so a worker learns whether it
// takes part from the one atomic it waits on, and a worker that does not
// take part never reads the job (which the caller may already be rewriting).
constexpr uint32_t kRangeBits = 8;
constexpr uint32_t kRangeMask = (1u << kRangeBits) - 1;
constexpr int kMaxThreads = static_cast<int>(kRangeMask);
constexpr uint32_t kStopRanges = kRangeMask;  // ranges field that means "exit"

// How long an idle worker spins before it sleeps. A decode step issues
// matmuls microseconds apart, so a worker that is still spinning picks the
// next one up in ~100 ns instead of a futex wake-up's ~10-50 us; beyond this
// the pool is probably idle and the core should go to someone else.
constexpr auto kSpinTime = std::chrono::microseconds(200);
// Spinners yield every this many pauses (~1-2 us): free when the core has
// nothing else to run, and when it does (more threads than cores, or a busy
// machine) the thread we wait for may be the one that gets it.
constexpr int kSpinsPerYield = 32;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

struct ThreadPool::State {
  std::atomic<uint32_t> epoch{0};
  std::atomic<int> pending{0};   // participating workers not yet done
  std::atomic<int> sleepers{0};  // workers blocked (or about to block) in Sleep
  // The job. Written by the caller before the epoch is published (release)
  // and read by participating workers after they observe it (acquire).
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int64_t grain = 1;
  int64_t grains = 0;
  std::vector<std::thread> workers;
#if !defined(__linux__)
  std::mutex mu;
  std::condition_variable cv;
#endif

  // Blocks while epoch == seen (spurious returns are fine).
  void Sleep(uint32_t seen) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch), FUTEX_WAIT_PRIVATE, seen, nullptr,
            nullptr, 0);
#else
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return epoch.load() != seen; });
#endif
  }

  void WakeAll() {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
#else
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
#endif
  }

  // Publishes a new epoch announcing `ranges` ranges (seq_cst, so that the
  // sleepers check below cannot miss a worker going to sleep; see WaitNext).
  void Publish(uint32_t ranges) {
    const uint32_t old = epoch.load(std::memory_order_relaxed);
    const uint32_t next = ((old >> kRangeBits) + 1) << kRangeBits | ranges;
#if defined(__linux__)
    epoch.store(next, std::memory_order_seq_cst);
#else
    {
      std::lock_guard<std::mutex> lock(mu);
      epoch.store(next, std::memory_order_seq_cst);
    }
#endif
    if (sleepers.load(std::memory_order_seq_cst) > 0) WakeAll();
  }

  // Waits for an epoch other than `seen` and returns it.
  uint32_t WaitNext(uint32_t seen) {
    const auto start = std::chrono::steady_clock::now();
    for (int spin = 1;; ++spin) {
      const uint32_t e = epoch.load(std::memory_order_acquire);
      if (e != seen) return e;
      CpuRelax();
      if (spin % kSpinsPerYield == 0) {
        if (std::chrono::steady_clock::now() - start > kSpinTime) break;
        std::this_thread::yield();
      }
    }
    for (;;) {
      // Either Publish sees this increment and wakes us, or its store happened
      // first and the futex sees the changed epoch and returns at once.
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      Sleep(seen);
      sleepers.fetch_sub(1, std::memory_order_relaxed);
      const uint32_t e = epoch.load(std::memory_order_acquire);
      if (e != seen) return e;
    }
  }

  // Range `i` of `ranges`: whole grains, as even as possible.
  void RunRange(uint32_t i, uint32_t ranges) const {
    const int64_t g0 = grains * i / ranges;
    const int64_t g1 = grains * (i + 1) / ranges;
    const int64_t begin = g0 * grain;
    const int64_t end = std::min(n, g1 * grain);
    if (begin < end) (*fn)(begin, end);
  }

  void WorkerLoop(uint32_t index) {
    uint32_t seen = 0;
    for (;;) {
      seen = WaitNext(seen);
      const uint32_t ranges = seen & kRangeMask;
      if (ranges == kStopRanges) return;
      if (index >= ranges) continue;  // not needed for this job
      RunRange(index, ranges);
      pending.fetch_sub(1, std::memory_order_release);
    }
  }
};

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(std::clamp(num_threads, 1, kMaxThreads - 1)), state_(new State) {
  state_->workers.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) {
    state_->workers.emplace_back([s = state_, i] { s->WorkerLoop(static_cast<uint32_t>(i)); });
  }
}

ThreadPool::~ThreadPool() {
  if (!state_->workers.empty()) state_->Publish(kStopRanges);
  for (std::thread& t : state_->workers) t.join();
  delete state_;
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t begin, int64_t end)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t grains = (n + grain - 1) / grain;
  const uint32_t ranges = static_cast<uint32_t>(std::min<int64_t>(num_threads_, grains));
  if (ranges <= 1) {
    fn(0, n);
    return;
  }
  State& s = *state_;
  s.fn = &fn;
  s.n = n;
  s.grain = grain;
  s.grains = grains;
  s.pending.store(static_cast<int>(ranges) - 1, std::memory_order_relaxed);
  s.Publish(ranges);
  s.RunRange(0, ranges);
  // The caller's own range is usually as long as the others, so the rest are
  // nearly done: spin, yielding now and then in case a worker lost its core.
  for (int spin = 1; s.pending.load(std::memory_order_acquire) != 0; ++spin) {
    CpuRelax();
    if (spin % kSpinsPerYield == 0) std::this_thread::yield();
  }
}

int ThreadPool::DefaultThreads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return std::min(count, kMaxThreads - 1);
  }
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : std::min(static_cast<int>(hw), kMaxThreads - 1);
}

}  // namespace sinkserve::engine
