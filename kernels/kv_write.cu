// Writes the new rows' pre-RoPE keys and values into their slots, converting
// to the storage type: one block per row.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

template <typename T>
__global__ void KvWriteKernel(const float* k, const float* v, const float* bk, const float* bv,
                              StepTables t, int layer, int kv_dim) {
  const int row = blockIdx.x;
  const int seq = t.row_seq[row];
  const int64_t cap = t.seq_capacity[seq];
  T* base = static_cast<T*>(t.seq_kv[seq]);  // (layer, {K,V}, capacity, kv_dim)
  T* kd = base + ((2 * static_cast<int64_t>(layer)) * cap + t.row_slot[row]) * kv_dim;
  T* vd = kd + cap * kv_dim;
  const float* ks = k + static_cast<int64_t>(row) * kv_dim;  // (kv_dim)
  const float* vs = v + static_cast<int64_t>(row) * kv_dim;  // (kv_dim)
  for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
    kd[c] = FromFloat<T>(ks[c] + (bk != nullptr ? bk[c] : 0.f));
    vd[c] = FromFloat<T>(vs[c] + (bv != nullptr ? bv[c] : 0.f));
  }
}

}  // namespace

cudaError_t LaunchKvWrite(const float* k, const float* v, const float* bk, const float* bv,
                          const StepTables& t, int layer, int kv_dim, DType kv_type,
                          cudaStream_t stream) {
  if (t.n_rows == 0) return cudaSuccess;
  return DispatchDType(kv_type, [&](auto tag) {
    using T = decltype(tag);
    KvWriteKernel<T><<<t.n_rows, 128, 0, stream>>>(k, v, bk, bv, t, layer, kv_dim);
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
