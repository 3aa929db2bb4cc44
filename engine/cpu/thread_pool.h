// A persistent pool of worker threads for data-parallel loops.
//
// Decode steps of a tiny model take microseconds, so dispatch must cost far
// less than a mutex/condvar round trip: workers spin briefly on an atomic epoch
// before they sleep, and the calling thread takes a share of the work itself.
#ifndef SINKSERVE_ENGINE_CPU_THREAD_POOL_H_
#define SINKSERVE_ENGINE_CPU_THREAD_POOL_H_

#include <cstdint>
#include <functional>

namespace sinkserve::engine {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread: 1 means no workers at all.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), split into at
  // most num_threads() contiguous ranges of whole `grain`s, and returns when
  // all are done. Not reentrant: fn must not call ParallelFor; and one
  // caller at a time (a pool serves one thread's loop).
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t begin, int64_t end)>& fn);

  // Defaults to the machine's core count.
  static int DefaultThreads();

 private:
  struct State;
  int num_threads_;
  State* state_;
};

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_THREAD_POOL_H_
