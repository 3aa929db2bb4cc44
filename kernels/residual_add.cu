// x += y over f32 rows. The backend folds most residual adds into the output
// projections (cuBLAS beta = 1); this is for the paths that cannot.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

__global__ void ResidualAddKernel(float* x, const float* y, int64_t count) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) x[i] += y[i];
}

}  // namespace

cudaError_t LaunchResidualAdd(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  ResidualAddKernel<<<Blocks(count, 256), 256, 0, stream>>>(x, y, count);
  return cudaGetLastError();
}

}  // namespace sinkserve::kernels
