// The CPU reference backend: a llama/qwen2 forward pass over mmapped GGUF
// weights, batched across sequences.
//
// All new tokens of a step go through each matmul as one (n_tokens, dim)
// matrix, so a prefill is matrix-matrix and a batch of decodes reads each
// weight once; attention then runs per sequence over its own KV storage.
#ifndef SINKSERVE_ENGINE_CPU_CPU_BACKEND_H_
#define SINKSERVE_ENGINE_CPU_CPU_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/cpu/attention.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"

namespace sinkserve::engine {

struct CpuBackendOptions {
  // Threads for matmuls and attention, counting the calling thread; 0 means
  // one per core.
  // Default: 0.
  int threads = 0;
  // Element type of the K/V rows of every storage NewKvStorage makes. F16 and
  // BF16 halve the cache's memory and bandwidth; attention still computes in
  // float (rows are widened exactly as they are read).
  // Default: KvDtype::kF32.
  KvDtype kv_dtype = KvDtype::kF32;
};

// The backend shares `weights` (several backends may serve one mapping).
// Forward() rejects positions outside [0, kMaxRopePosition) (attention.h)
// with INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(
    std::shared_ptr<const ModelWeights> weights, const CpuBackendOptions& options);

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_CPU_CPU_BACKEND_H_
