#include "kernels/device_context.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.h"
#include "memory/status_macros.h"

namespace sinkserve::kernels {

absl::StatusOr<std::shared_ptr<DeviceContext>> DeviceContext::Create(int device) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess || count == 0) {
    return absl::UnavailableError(absl::StrCat(
        "no usable CUDA device: ",
        error != cudaSuccess ? cudaGetErrorString(error) : "the driver reports none"));
  }
  if (device < 0 || device >= count) {
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", device, " requested; ", count, " present"));
  }
  std::shared_ptr<DeviceContext> ctx(new DeviceContext(device));
  SINKSERVE_RETURN_IF_ERROR(ctx->Activate());
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&ctx->multiprocessors_, cudaDevAttrMultiProcessorCount, device));
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&ctx->stream_, cudaStreamNonBlocking));
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&ctx->copy_stream_, cudaStreamNonBlocking));
  // Checkpoint rows are staged with cudaMallocAsync; keep freed memory in the
  // pool instead of returning it to the driver at every synchronization.
  cudaMemPool_t pool = nullptr;
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;
  SINKSERVE_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  SINKSERVE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&ctx->cublas_));
  SINKSERVE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(ctx->cublas_, ctx->stream_));
  constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // NVIDIA's advice for Hopper
  SINKSERVE_RETURN_IF_ERROR(ctx->cublas_workspace_.Reserve(kWorkspaceBytes));
  SINKSERVE_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(ctx->cublas_, ctx->cublas_workspace_.get(), kWorkspaceBytes));
  return ctx;
}

DeviceContext::~DeviceContext() {
  // Errors are ignored: a destructor has nobody to report them to.
  cudaSetDevice(device_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
}

absl::Status DeviceContext::Activate() const {
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  return absl::OkStatus();
}

absl::Status DeviceContext::Synchronize() const {
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  SINKSERVE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace sinkserve::kernels
