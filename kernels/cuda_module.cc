// The entry point of libsinkserve_cuda_backend.so (see cuda_module.h).
#include "kernels/cuda_module.h"

#include <type_traits>

#include "kernels/cuda_backend.h"

extern "C" __attribute__((visibility("default"))) void sinkserve_new_cuda_backend(
    const std::shared_ptr<const sinkserve::engine::ModelWeights>* weights,
    const sinkserve::kernels::CudaBackendOptions* options,
    absl::StatusOr<std::unique_ptr<sinkserve::engine::Backend>>* out) {
  *out = sinkserve::kernels::NewCudaBackend(*weights, *options);
}

// The registry checks the entry's type against this declaration.
static_assert(std::is_same_v<decltype(&sinkserve_new_cuda_backend),
                             sinkserve::kernels::CudaModuleEntry>);
