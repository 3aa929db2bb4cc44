// Embedding gather: one block per token, rows widened to f32.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

template <typename T>
__global__ void EmbeddingKernel(const T* table, const int32_t* tokens, int dim, float* x) {
  const T* row = table + static_cast<int64_t>(tokens[blockIdx.x]) * dim;  // (dim)
  float* out = x + static_cast<int64_t>(blockIdx.x) * dim;                // (dim)
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = ToFloat(row[i]);
}

}  // namespace

cudaError_t LaunchEmbedding(const void* table, DType type, const int32_t* tokens, int n,
                            int dim, float* x, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return DispatchDType(type, [&](auto tag) {
    using T = decltype(tag);
    EmbeddingKernel<T><<<n, 256, 0, stream>>>(static_cast<const T*>(table), tokens, dim, x);
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
