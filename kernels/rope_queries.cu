// Query bias + RoPE, in place, one thread per rotation pair. Keys are never
// rotated in storage: the attention kernels rotate them on the fly.
#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

__global__ void RopeQueriesKernel(float* q, const float* bias, const int32_t* row_position,
                                  int n_rows, int n_heads, int head_dim, int neox,
                                  const float* rope_cos, const float* rope_sin) {
  const int half = head_dim / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(n_rows) * n_heads * half) return;
  const int p = i % half;
  const int64_t head = i / half;  // row * n_heads + h
  const int row = head / n_heads;
  const int h = head % n_heads;
  const int d0 = neox ? p : 2 * p;
  const int d1 = neox ? p + half : 2 * p + 1;
  float* qh = q + head * head_dim;  // (head_dim)
  float x0 = qh[d0], x1 = qh[d1];
  if (bias != nullptr) {
    x0 += bias[h * head_dim + d0];
    x1 += bias[h * head_dim + d1];
  }
  const int64_t t = static_cast<int64_t>(row_position[row]) * half + p;
  const float c = rope_cos[t], s = rope_sin[t];
  qh[d0] = x0 * c - x1 * s;
  qh[d1] = x0 * s + x1 * c;
}

}  // namespace

cudaError_t LaunchRopeQueries(float* q, const float* bias, const StepTables& t,
                              const AttentionShape& s, const float* rope_cos,
                              const float* rope_sin, cudaStream_t stream) {
  const int64_t pairs = static_cast<int64_t>(t.n_rows) * s.n_heads * (s.head_dim / 2);
  if (pairs == 0) return cudaSuccess;
  RopeQueriesKernel<<<Blocks(pairs, 256), 256, 0, stream>>>(
      q, bias, t.row_position, t.n_rows, s.n_heads, s.head_dim, s.rope_neox, rope_cos,
      rope_sin);
  return cudaGetLastError();
}

}  // namespace sinkserve::kernels
