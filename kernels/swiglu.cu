// SwiGLU: silu(gate) * up into the down projection's input type. The exp
// argument is clamped at 88 as on the CPU (vec_ops.cc).
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

template <typename T>
__global__ void SwiGluKernel(const float* gate, const float* up, int64_t count, T* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float g = gate[i];
  out[i] = FromFloat<T>(g / (1.f + expf(fminf(-g, 88.f))) * up[i]);
}

}  // namespace

cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t count, DType out_type,
                         void* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return DispatchDType(out_type, [&](auto tag) {
    using T = decltype(tag);
    SwiGluKernel<T><<<Blocks(count, 256), 256, 0, stream>>>(gate, up, count,
                                                           static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
