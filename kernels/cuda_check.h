// Turns CUDA runtime and cuBLAS return codes into absl::Status, so a device
// error travels to the caller like any other error and never ends the process.
#ifndef SINKSERVE_KERNELS_CUDA_CHECK_H_
#define SINKSERVE_KERNELS_CUDA_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {

// Out of memory is RESOURCE_EXHAUSTED (the caller may retry with a smaller
// cache); no device is UNAVAILABLE; anything else is INTERNAL, since a failed
// launch leaves the context in an unknown state.
inline absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

inline absl::Status CublasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat(what, ": cuBLAS ", cublasGetStatusName(status), " (",
                   cublasGetStatusString(status), ")");
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (status == CUBLAS_STATUS_NOT_INITIALIZED) return absl::UnavailableError(message);
  return absl::InternalError(message);
}

}  // namespace sinkserve::kernels

// The expression text names the failing call in the message.
#define SINKSERVE_CUDA_RETURN_IF_ERROR(expr) \
  SINKSERVE_RETURN_IF_ERROR(::sinkserve::kernels::CudaStatus((expr), #expr))
#define SINKSERVE_CUBLAS_RETURN_IF_ERROR(expr) \
  SINKSERVE_RETURN_IF_ERROR(::sinkserve::kernels::CublasStatus((expr), #expr))

#endif  // SINKSERVE_KERNELS_CUDA_CHECK_H_
