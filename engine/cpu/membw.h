// Memory read bandwidth of this machine, the ceiling for decode speed: a
// decode step streams every weight once, so tokens/s <= bandwidth / bytes.
#ifndef SINKSERVE_ENGINE_CPU_MEMBW_H_
#define SINKSERVE_ENGINE_CPU_MEMBW_H_

#include <cstdint>

#include "engine/cpu/thread_pool.h"

namespace sinkserve::engine {

struct MemBwOptions {
  // Bytes to stream per pass; 0 picks 8x the L3 size, clamped to
  // [512 MiB, 1 GiB], so that caches cannot serve the reads.
  // Default: 0.
  int64_t bytes = 0;
  // Timed passes after one warm-up pass; the best is reported, as STREAM
  // does (the others lose to noise: page-cache work, other processes).
  // Default: 5.
  int passes = 5;
};

// Streams a buffer with SIMD loads (summing it, so no read can be skipped)
// on `threads` threads of `pool` (the caller included; capped at
// pool->num_threads(); pool may be null for one thread) and returns GB/s
// (1e9 bytes per second). The buffer is allocated, touched and freed here.
double MeasureReadBandwidth(int threads, ThreadPool* pool, const MemBwOptions& options);
double MeasureReadBandwidth(int threads, ThreadPool* pool);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_MEMBW_H_
