// Gather / scatter of whole slots (every layer, K and V) between a storage
// arena and a packed buffer. MoveSlots is a gather then a scatter, which
// gives the in-order semantics of KvStorage::MoveSlots whenever no pair
// reads a slot an earlier pair wrote; snapshots use one of the two.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

// One thread per 2-byte unit; index over (layer, kv, i, e) of the packed side.
template <bool kGather>
__global__ void SlotRowsKernel(uint16_t* storage, int n_layers, int capacity, int row_elems,
                               const int32_t* slots, int n, uint16_t* packed) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t total = static_cast<int64_t>(n_layers) * 2 * n * row_elems;
  if (idx >= total) return;
  const int e = idx % row_elems;
  const int64_t r = idx / row_elems;  // (layer * 2 + kv) * n + i
  const int i = r % n;
  const int64_t lk = r / n;           // layer * 2 + kv
  const int64_t s = (lk * capacity + slots[i]) * row_elems + e;
  if (kGather) {
    packed[idx] = storage[s];
  } else {
    storage[s] = packed[idx];
  }
}

}  // namespace

cudaError_t LaunchGatherSlots(const uint16_t* storage, int n_layers, int capacity,
                              int row_elems, const int32_t* slots, int n, uint16_t* packed,
                              cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(n_layers) * 2 * n * row_elems;
  if (total == 0) return cudaSuccess;
  SlotRowsKernel<true><<<Blocks(total, 256), 256, 0, stream>>>(
      const_cast<uint16_t*>(storage), n_layers, capacity, row_elems, slots, n, packed);
  return cudaGetLastError();
}

cudaError_t LaunchScatterSlots(const uint16_t* packed, int n_layers, int capacity,
                               int row_elems, const int32_t* slots, int n, uint16_t* storage,
                               cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(n_layers) * 2 * n * row_elems;
  if (total == 0) return cudaSuccess;
  SlotRowsKernel<false><<<Blocks(total, 256), 256, 0, stream>>>(
      storage, n_layers, capacity, row_elems, slots, n, const_cast<uint16_t*>(packed));
  return cudaGetLastError();
}

}  // namespace sinkserve::kernels
