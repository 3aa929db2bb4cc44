// The CUDA backend: the llama/qwen2 forward of engine/cpu/cpu_backend.cc on one
// GPU, with weights and KV rows in device memory, GEMMs through cuBLAS and
// fused kernels for the rest (kernels/ops.h).
//
// It mirrors the CPU reference op for op — RMSNorm, RoPE applied to keys on
// the fly from each cell's position, GQA, SwiGLU, qwen2 biases, tied output —
// so its logits match the CPU backend's to rounding in f32 mode. Snapshots
// are portable: CudaKvStorage exports the same byte layout as the CPU storage
// of the same KV dtype.
#ifndef SINKSERVE_KERNELS_CUDA_BACKEND_H_
#define SINKSERVE_KERNELS_CUDA_BACKEND_H_

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"
#include "kernels/cuda_backend_options.h"
#include "kernels/ops.h"

namespace sinkserve::kernels {

// What NewCudaBackend returns, beyond engine::Backend: token picks on the
// device, so a decode step ships one token id per sequence to the host
// instead of a vocab-wide logits row.
class CudaBackend : public engine::Backend {
 public:
  // Forward, then for each sequence s with picks[s] set, a pick from its last
  // logits row on the device (sampling.cu: log-softmax, surprisal of
  // picks[s]->target, greedy / top-k / top-p / temperature); that sequence's
  // result->logits[s] stays empty and (*samples)[s] holds the pick. Others
  // get their logits as from Forward. picks is empty or batch.size() long;
  // a pick needs logits mode kLast or kAll (INVALID_ARGUMENT otherwise).
  virtual absl::Status ForwardAndSample(absl::Span<const engine::SequenceStep> batch,
                                        absl::Span<const std::optional<SampleParams>> picks,
                                        engine::StepResult* result,
                                        std::vector<SampleResult>* samples) = 0;
  // Steps served by replaying a captured CUDA graph (options.cuda_graphs).
  virtual int64_t graph_replays() const = 0;
};

// Whether the CUDA runtime sees at least one device. Never fails: no driver
// or no device is simply false.
bool CudaAvailable();

// The result is a CudaBackend (dynamic_cast for ForwardAndSample).
// UNAVAILABLE without a usable device; UNIMPLEMENTED for a weight type the
// device loader cannot convert (it handles F32, F16, BF16, Q8_0, Q4_0, Q4_K,
// Q6_K); RESOURCE_EXHAUSTED when the weights do not fit. The backend keeps
// `weights` alive only while loading: everything it needs is copied.
absl::StatusOr<std::unique_ptr<engine::Backend>> NewCudaBackend(
    std::shared_ptr<const engine::ModelWeights> weights, const CudaBackendOptions& options);

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_CUDA_BACKEND_H_
