// RMSNorm of f32 rows into the GEMM input type: one block per row. The sum of
// squares is accumulated in double like the CPU reference (vec_ops.cc), so
// f32 mode matches it to rounding.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void RmsNormKernel(const float* x, const int32_t* rows, const float* w, int dim,
                              float eps, T* out) {
  const int64_t src = rows != nullptr ? rows[blockIdx.x] : blockIdx.x;
  const float* xr = x + src * dim;                            // (dim)
  T* o = out + static_cast<int64_t>(blockIdx.x) * dim;        // (dim)
  double ss = 0;
  for (int i = threadIdx.x; i < dim; i += kThreads) ss += double{xr[i]} * xr[i];
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  __shared__ double warp_sums[kThreads / 32];
  __shared__ float scale;
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int i = 0; i < kThreads / 32; ++i) total += warp_sums[i];
    scale = static_cast<float>(1.0 / sqrt(total / dim + eps));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < dim; i += kThreads) o[i] = FromFloat<T>(xr[i] * scale * w[i]);
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const int32_t* rows, const float* w, int n,
                          int dim, float eps, DType out_type, void* out,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return DispatchDType(out_type, [&](auto tag) {
    using T = decltype(tag);
    RmsNormKernel<T><<<n, kThreads, 0, stream>>>(x, rows, w, dim, eps, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
