// The device, stream and cuBLAS handle one CUDA backend works on, shared by
// the backend and every KV storage it made (storages may outlive it).
#ifndef SINKSERVE_KERNELS_DEVICE_CONTEXT_H_
#define SINKSERVE_KERNELS_DEVICE_CONTEXT_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/device_buffer.h"

namespace sinkserve::kernels {

class DeviceContext {
 public:
  // UNAVAILABLE when `device` is not a usable CUDA device.
  static absl::StatusOr<std::shared_ptr<DeviceContext>> Create(int device);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // A second stream for copies off the device that must not hold up the
  // compute stream (checkpoint rows); ordered after it with events.
  cudaStream_t copy_stream() const { return copy_stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  int multiprocessors() const { return multiprocessors_; }

  // Makes this context's device current on the calling thread.
  absl::Status Activate() const;
  // Waits for the stream and reports any error of the work queued on it.
  absl::Status Synchronize() const;

 private:
  explicit DeviceContext(int device) : device_(device) {}

  int device_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  int multiprocessors_ = 1;
  // cuBLAS's workspace, given explicitly so GEMMs captured into CUDA graphs
  // never allocate. Declared after cublas_ so it is freed after the handle.
  DeviceBuffer cublas_workspace_;
};

}  // namespace sinkserve::kernels

#endif  // SINKSERVE_KERNELS_DEVICE_CONTEXT_H_
