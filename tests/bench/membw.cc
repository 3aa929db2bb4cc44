// Memory read bandwidth for 1 .. N threads, the ceiling for decode speed.
//
//   membw [--threads=N] [--mib=BUFFER_MIB] [--passes=P]
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/cpu/membw.h"
#include "engine/cpu/thread_pool.h"

int main(int argc, char** argv) {
  namespace se = sinkserve::engine;
  int max_threads = se::ThreadPool::DefaultThreads();
  se::MemBwOptions options;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      max_threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--mib=", 6) == 0) {
      options.bytes = static_cast<int64_t>(std::atoll(argv[i] + 6)) << 20;
    } else if (std::strncmp(argv[i], "--passes=", 9) == 0) {
      options.passes = std::atoi(argv[i] + 9);
    } else {
      std::fprintf(stderr, "usage: %s [--threads=N] [--mib=BUFFER_MIB] [--passes=P]\n", argv[0]);
      return 2;
    }
  }
  se::ThreadPool pool(max_threads);
  for (int t = 1; t <= max_threads; t *= 2) {
    std::printf("threads=%-3d read %.1f GB/s\n", t, se::MeasureReadBandwidth(t, &pool, options));
    if (t < max_threads && t * 2 > max_threads) t = max_threads / 2;  // end on max_threads
  }
  return 0;
}
