// Picks and makes a compute backend by name: "cpu", "cuda", or "auto" (CUDA
// when this build has it and a GPU is usable, else CPU). The one place that
// depends on kernels/; builds with and without CUDA.
#ifndef SINKSERVE_KERNELS_BACKEND_REGISTRY_H_
#define SINKSERVE_KERNELS_BACKEND_REGISTRY_H_

#include <memory>
#include <optional>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"

namespace sinkserve::kernels {

struct BackendOptions {
  // CPU backend threads, counting the caller; 0 means one per core.
  // Default: 0.
  int cpu_threads = 0;
  // CUDA device ordinal.
  // Default: 0.
  int cuda_device = 0;
  // Type of weight matrices on the GPU (f32 for exactness checks).
  // Default: kF16.
  engine::KvDtype cuda_weight_dtype = engine::KvDtype::kF16;
  // KV row type. Default: unset, each backend's own default (CPU f32, CUDA f16).
  std::optional<engine::KvDtype> kv_dtype;
};

// Whether this binary was built with the CUDA backend.
bool CudaCompiledIn();

// `name` is "auto", "cpu" or "cuda". INVALID_ARGUMENT for another name;
// "cuda" in a build without CUDA is FAILED_PRECONDITION, and without a usable
// device UNAVAILABLE. "auto" falls back to the CPU when no GPU is usable or
// the CUDA backend cannot run the model (UNIMPLEMENTED); other CUDA errors,
// such as weights that do not fit, are returned.
absl::StatusOr<std::unique_ptr<engine::Backend>> MakeBackend(
    std::string_view name, std::shared_ptr<const engine::ModelWeights> weights,
    const BackendOptions& options);

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_BACKEND_REGISTRY_H_
