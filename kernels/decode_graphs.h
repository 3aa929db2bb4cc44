// CUDA graphs for steady decode: a step whose shape (and every device
// address its kernels read) repeats the previous one is captured once and
// then replayed, replacing ~12 launches per layer with one graph launch.
//
// The key must name everything baked into the captured launches: counts that
// size grids or kernel arguments, and the addresses of every buffer. Any
// change gives a new key, so a stale graph is never replayed; a key seen once
// runs eagerly (prefill chunks and growing caches never pay for a capture).
#ifndef SINKSERVE_KERNELS_DECODE_GRAPHS_H_
#define SINKSERVE_KERNELS_DECODE_GRAPHS_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace sinkserve::kernels {

class DecodeGraphs {
 public:
  using Key = std::vector<int64_t>;

  DecodeGraphs() = default;
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;
  ~DecodeGraphs() { Clear(); }

  // Runs `body` (which only enqueues work on `stream`: no allocation, no
  // synchronisation) eagerly, or captured and replayed as described above.
  absl::Status Run(const Key& key, cudaStream_t stream,
                   const std::function<absl::Status()>& body);

  size_t size() const { return graphs_.size(); }
  int64_t replays() const { return replays_; }

 private:
  // Distinct shapes kept; a server's steady batches take few.
  static constexpr size_t kMaxGraphs = 32;

  void Clear();

  absl::flat_hash_map<Key, cudaGraphExec_t> graphs_;
  Key last_;  // the previous step's key: seen twice in a row means steady
  int64_t replays_ = 0;
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_DECODE_GRAPHS_H_
