// Split-K decode attention with RoPE applied to keys on the fly.
//
// Grid (row, kv head x head chunk, split). A block owns one query row, up to
// kMaxGroup query heads that share one KV head (GQA: each key and value row
// is read once for all of them) and one range of the row's keys; its 4 warps
// take keys round-robin, lanes split the head into rotation pairs, and each
// warp keeps an online softmax per head. Warps merge in shared memory, splits
// merge in a second kernel. One pass over K and V; keys are stored pre-RoPE
// and rotated by their cell's position from the cos/sin table, so the scores
// equal the CPU reference's (engine/cpu/attention.cc) to rounding.
#include <cmath>

#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;
constexpr int kKeysPerIter = 4;

// G: heads per block (power of two <= kMaxGroup); P: rotation pairs per lane.
template <typename KT, int G, int P>
__global__ void __launch_bounds__(kWarps * 32)
    DecodeAttentionKernel(const float* q, StepTables t, AttentionShape s, int layer,
                          const float* rope_cos, const float* rope_sin, const int32_t* row_list,
                          int keys_per_split, int n_splits, float* partial) {
  const int row = row_list != nullptr ? row_list[blockIdx.x] : blockIdx.x;
  const int group = s.n_heads / s.n_kv_heads;
  const int chunks = (group + G - 1) / G;
  const int kvh = blockIdx.y / chunks;
  const int h0 = kvh * group + (blockIdx.y % chunks) * G;  // first query head
  const int nh = min(G, kvh * group + group - h0);
  const int half = s.head_dim / 2;
  const int kv_dim = s.n_kv_heads * s.head_dim;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  const int seq = t.row_seq[row];
  const int n_keys = t.row_n_keys[row];
  const int64_t cap = t.seq_capacity[seq];
  const int32_t* key_slot = t.key_slot + t.seq_key_begin[seq];
  const int32_t* key_pos = t.key_position + t.seq_key_begin[seq];
  const KT* k_layer = static_cast<const KT*>(t.seq_kv[seq]) + 2 * layer * cap * kv_dim;
  const KT* v_layer = k_layer + cap * kv_dim;  // (capacity, kv_dim)
  const int j0 = blockIdx.z * keys_per_split;
  const int j1 = min(n_keys, j0 + keys_per_split);

  // Pair u of this lane is p = lane + 32 u: dims d0(p), d1(p) of the head.
  auto dim0 = [&](int p) { return s.rope_neox ? p : 2 * p; };
  auto dim1 = [&](int p) { return s.rope_neox ? p + half : 2 * p + 1; };
  float q0[G][P], q1[G][P], a0[G][P], a1[G][P], m[G], l[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int u = 0; u < P; ++u) {
      const int p = lane + 32 * u;
      const bool ok = g < nh && p < half;
      const float* qh = q + (static_cast<int64_t>(row) * s.n_heads + h0 + g) * s.head_dim;
      q0[g][u] = ok ? qh[dim0(p)] * s.scale : 0.f;
      q1[g][u] = ok ? qh[dim1(p)] * s.scale : 0.f;
      a0[g][u] = a1[g][u] = 0.f;
    }
  }

  // Each warp takes kKeysPerIter consecutive keys per iteration and issues
  // all their loads before the first use, so several row reads are in flight
  // per warp instead of one dependent load chain per key.
  for (int jb = j0 + warp * kKeysPerIter; jb < j1; jb += kWarps * kKeysPerIter) {
    float k0[kKeysPerIter][P], k1[kKeysPerIter][P], v0[kKeysPerIter][P], v1[kKeysPerIter][P];
#pragma unroll
    for (int kk = 0; kk < kKeysPerIter; ++kk) {
      const bool key_ok = jb + kk < j1;
      const int64_t slot = key_ok ? key_slot[jb + kk] : 0;
      const int64_t pos = key_ok ? key_pos[jb + kk] : 0;
      const KT* kr = k_layer + slot * kv_dim + kvh * s.head_dim;  // (head_dim)
      const KT* vr = v_layer + slot * kv_dim + kvh * s.head_dim;  // (head_dim)
#pragma unroll
      for (int u = 0; u < P; ++u) {
        const int p = lane + 32 * u;
        k0[kk][u] = k1[kk][u] = v0[kk][u] = v1[kk][u] = 0.f;
        if (key_ok && p < half) {
          const float x0 = ToFloat(kr[dim0(p)]), x1 = ToFloat(kr[dim1(p)]);
          const float c = rope_cos[pos * half + p], sn = rope_sin[pos * half + p];
          k0[kk][u] = x0 * c - x1 * sn;
          k1[kk][u] = x0 * sn + x1 * c;
          v0[kk][u] = ToFloat(vr[dim0(p)]);
          v1[kk][u] = ToFloat(vr[dim1(p)]);
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < kKeysPerIter; ++kk) {
      if (jb + kk >= j1) break;  // warp-uniform
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float part = 0.f;
#pragma unroll
        for (int u = 0; u < P; ++u) part += q0[g][u] * k0[kk][u] + q1[g][u] * k1[kk][u];
        const float score = WarpSum(part);
        const float m_new = fmaxf(m[g], score);
        const float corr = expf(m[g] - m_new);  // 0 while m is -inf
        const float w = expf(score - m_new);
        l[g] = l[g] * corr + w;
        m[g] = m_new;
#pragma unroll
        for (int u = 0; u < P; ++u) {
          a0[g][u] = a0[g][u] * corr + w * v0[kk][u];
          a1[g][u] = a1[g][u] * corr + w * v1[kk][u];
        }
      }
    }
  }

  // Merge the warps: (warp, head) maxima and sums, (warp, head, head_dim) accumulators.
  __shared__ float sm[kWarps][G], sl[kWarps][G];
  __shared__ float sa[kWarps][G][64 * P];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm[warp][g] = m[g];
      sl[warp][g] = l[g];
    }
#pragma unroll
    for (int u = 0; u < P; ++u) {
      const int p = lane + 32 * u;
      if (p < half) {
        sa[warp][g][dim0(p)] = a0[g][u];
        sa[warp][g][dim1(p)] = a1[g][u];
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nh * s.head_dim; i += kWarps * 32) {
    const int g = i / s.head_dim, d = i % s.head_dim;
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm[w][g]);
    float sum_l = 0.f, sum_a = 0.f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float f = sm[w][g] == -INFINITY ? 0.f : expf(sm[w][g] - mx);
        sum_l += f * sl[w][g];
        sum_a += f * sa[w][g][d];
      }
    }
    // partial: (listed row, head, split, head_dim + 2) = [max, sum, acc...]
    float* out = partial + ((static_cast<int64_t>(blockIdx.x) * s.n_heads + h0 + g) * n_splits +
                            blockIdx.z) * (s.head_dim + 2);
    if (d == 0) {
      out[0] = mx;
      out[1] = sum_l;
    }
    out[2 + d] = sum_a;
  }
}

// One block per (row, head), one thread per head component.
template <typename OT>
__global__ void CombineSplitsKernel(const float* partial, const int32_t* row_list, int n_heads,
                                    int head_dim, int n_splits, OT* out) {
  const int64_t i = blockIdx.x / n_heads;  // listed row
  const int64_t row = row_list != nullptr ? row_list[i] : i;
  const int64_t rh = row * n_heads + blockIdx.x % n_heads;  // output (row, head)
  const float* p = partial + static_cast<int64_t>(blockIdx.x) * n_splits * (head_dim + 2);
  float mx = -INFINITY;
  for (int z = 0; z < n_splits; ++z) mx = fmaxf(mx, p[z * (head_dim + 2)]);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum_l = 0.f, sum_a = 0.f;
    for (int z = 0; z < n_splits; ++z) {
      const float* pz = p + z * (head_dim + 2);
      if (pz[0] == -INFINITY) continue;  // a split past the row's keys
      const float f = expf(pz[0] - mx);
      sum_l += f * pz[1];
      sum_a += f * pz[2 + d];
    }
    out[rh * head_dim + d] = FromFloat<OT>(sum_a / sum_l);
  }
}

template <typename KT, int G>
cudaError_t LaunchG(dim3 grid, int pairs_per_lane, const float* q, const StepTables& t,
                    const AttentionShape& s, int layer, const float* rope_cos,
                    const float* rope_sin, const int32_t* row_list, int keys_per_split,
                    int n_splits, float* partial, cudaStream_t stream) {
  const dim3 block(kWarps * 32);
  if (pairs_per_lane == 1) {
    DecodeAttentionKernel<KT, G, 1><<<grid, block, 0, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, row_list, keys_per_split, n_splits, partial);
  } else if (pairs_per_lane == 2) {
    DecodeAttentionKernel<KT, G, 2><<<grid, block, 0, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, row_list, keys_per_split, n_splits, partial);
  } else {
    DecodeAttentionKernel<KT, G, 4><<<grid, block, 0, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, row_list, keys_per_split, n_splits, partial);
  }
  return cudaGetLastError();
}

}  // namespace

size_t DecodeAttentionScratchFloats(int n_list, const AttentionShape& s, int n_splits) {
  return static_cast<size_t>(n_list) * s.n_heads * n_splits * (s.head_dim + 2);
}

cudaError_t LaunchDecodeAttention(const float* q, const StepTables& t, const AttentionShape& s,
                                  int layer, DType kv_type, const float* rope_cos,
                                  const float* rope_sin, const int32_t* row_list, int n_list,
                                  int n_splits, int max_keys, float* partial, DType out_type,
                                  void* out, cudaStream_t stream) {
  if (n_list == 0) return cudaSuccess;
  if (s.head_dim % 2 != 0 || s.head_dim > 256 || n_splits < 1 ||
      s.n_heads % s.n_kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  const int group = s.n_heads / s.n_kv_heads;
  const int g = group >= kMaxGroup ? kMaxGroup : group >= 4 ? 4 : group >= 2 ? 2 : 1;
  const int chunks = (group + g - 1) / g;
  const int half = s.head_dim / 2;
  const int pairs_per_lane = half <= 32 ? 1 : half <= 64 ? 2 : 4;
  const int keys_per_split = (max_keys + n_splits - 1) / n_splits;
  const dim3 grid(n_list, s.n_kv_heads * chunks, n_splits);
  cudaError_t err = DispatchDType(kv_type, [&](auto tag) {
    using KT = decltype(tag);
    switch (g) {
      case 1:
        return LaunchG<KT, 1>(grid, pairs_per_lane, q, t, s, layer, rope_cos, rope_sin,
                              row_list, keys_per_split, n_splits, partial, stream);
      case 2:
        return LaunchG<KT, 2>(grid, pairs_per_lane, q, t, s, layer, rope_cos, rope_sin,
                              row_list, keys_per_split, n_splits, partial, stream);
      case 4:
        return LaunchG<KT, 4>(grid, pairs_per_lane, q, t, s, layer, rope_cos, rope_sin,
                              row_list, keys_per_split, n_splits, partial, stream);
      default:
        return LaunchG<KT, 8>(grid, pairs_per_lane, q, t, s, layer, rope_cos, rope_sin,
                              row_list, keys_per_split, n_splits, partial, stream);
    }
  });
  if (err != cudaSuccess) return err;
  const int threads = s.head_dim < 128 ? s.head_dim : 128;
  return DispatchDType(out_type, [&](auto tag) {
    using OT = decltype(tag);
    CombineSplitsKernel<OT><<<n_list * s.n_heads, threads, 0, stream>>>(
        partial, row_list, s.n_heads, s.head_dim, n_splits, static_cast<OT*>(out));
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
