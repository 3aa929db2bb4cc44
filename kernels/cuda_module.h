// The CUDA backend lives in a loadable module, libsinkserve_cuda_backend.so,
// which the backend registry dlopens on first use of --backend cuda|auto.
// Linking cuBLAS into every binary costs each process start ~0.3 s, makes a
// CPU-only machine need the CUDA libraries, and adds cuBLAS's large static
// TLS to every thread: libraries that make threads with small stacks (the
// Prometheus exposer's civetweb) then fail to start them.
#ifndef SINKSERVE_KERNELS_CUDA_MODULE_H_
#define SINKSERVE_KERNELS_CUDA_MODULE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf/model_weights.h"
#include "kernels/cuda_backend_options.h"

namespace sinkserve::kernels {

// File name of the module, looked for beside the executable.
inline constexpr char kCudaModuleFile[] = "libsinkserve_cuda_backend.so";
// The one symbol it exports: NewCudaBackend behind a C name. Both sides are
// built from the same tree by the same compiler, so the C++ types match.
inline constexpr char kCudaModuleEntry[] = "sinkserve_new_cuda_backend";
using CudaModuleEntry = void (*)(const std::shared_ptr<const engine::ModelWeights>* weights,
                                 const CudaBackendOptions* options,
                                 absl::StatusOr<std::unique_ptr<engine::Backend>>* out);

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_CUDA_MODULE_H_
