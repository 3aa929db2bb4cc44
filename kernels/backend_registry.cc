#include "kernels/backend_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cpu_backend.h"

#ifdef SINKSERVE_HAVE_CUDA
#include "kernels/cuda_backend.h"
#endif

namespace sinkserve::kernels {
namespace {

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeCpu(
    std::shared_ptr<const engine::ModelWeights> weights, const BackendOptions& options) {
  engine::CpuBackendOptions cpu;
  cpu.threads = options.cpu_threads;
  if (options.kv_dtype.has_value()) cpu.kv_dtype = *options.kv_dtype;
  return engine::NewCpuBackend(std::move(weights), cpu);
}

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeCuda(
    std::shared_ptr<const engine::ModelWeights> weights, const BackendOptions& options) {
#ifdef SINKSERVE_HAVE_CUDA
  CudaBackendOptions cuda;
  cuda.device = options.cuda_device;
  cuda.weight_dtype = options.cuda_weight_dtype;
  if (options.kv_dtype.has_value()) cuda.kv_dtype = *options.kv_dtype;
  return NewCudaBackend(std::move(weights), cuda);
#else
  return absl::FailedPreconditionError(
      "this build has no CUDA backend (configure with -DSINKSERVE_CUDA=ON where nvcc "
      "exists); use --backend cpu or auto");
#endif
}

}  // namespace

bool CudaCompiledIn() {
#ifdef SINKSERVE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<engine::Backend>> MakeBackend(
    std::string_view name, std::shared_ptr<const engine::ModelWeights> weights,
    const BackendOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("null model weights");
  if (name == "cpu") return MakeCpu(std::move(weights), options);
  if (name == "cuda") return MakeCuda(std::move(weights), options);
  if (name == "auto") {
    if (!CudaCompiledIn()) return MakeCpu(std::move(weights), options);
    auto cuda = MakeCuda(weights, options);
    // No usable GPU, or a model the CUDA backend cannot run (head size,
    // weight type): the CPU serves it. Anything else (out of device memory,
    // a driver fault) is an error the caller should see.
    if (cuda.ok() ||
        !(absl::IsUnavailable(cuda.status()) || absl::IsUnimplemented(cuda.status()))) {
      return cuda;
    }
    return MakeCpu(std::move(weights), options);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown backend \"", absl::string_view(name.data(), name.size()),
      "\"; expected auto, cpu or cuda"));
}

}  // namespace sinkserve::kernels
