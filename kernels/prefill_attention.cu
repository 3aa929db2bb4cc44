// Causal attention for prefill chunks over cache + chunk, tiled so each key
// and value is read and rotated once per tile of query rows instead of once
// per row.
//
// Grid (tile, kv head x head chunk). A tile is up to kPrefillTileRows
// consecutive rows of one sequence; warp w owns row w and kHeads query heads
// of one KV head. Keys come in tiles of 32 into shared memory (rotated to
// their positions, f32), lane j scores key j, and each warp keeps an online
// softmax per head in registers. Row i of a chunk sees the context and new
// tokens 0..i (row_n_keys), so the causal mask is a per-row key count.
#include <cmath>

#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

constexpr int kRows = kPrefillTileRows;  // one warp per row
constexpr int kHeads = 4;                // query heads per block
constexpr int kKeys = 32;                // keys per shared-memory tile
constexpr int kMaxHeadDim = 128;

size_t SharedBytes(int head_dim) {
  return sizeof(float) * (static_cast<size_t>(kRows) * kHeads * head_dim +  // q
                          kKeys * (head_dim + 1) +                          // K, padded
                          kKeys * head_dim);                                // V
}

// D: head components per lane (head_dim <= 32 D).
template <typename KT, typename OT, int D>
__global__ void __launch_bounds__(kRows * 32)
    PrefillAttentionKernel(const float* q, StepTables t, AttentionShape s, int layer,
                           const float* rope_cos, const float* rope_sin,
                           const int32_t* tile_first_row, OT* out) {
  extern __shared__ float smem[];
  const int hd = s.head_dim, half = hd / 2;
  float* q_s = smem;                             // (kRows, kHeads, head_dim)
  float* k_s = q_s + kRows * kHeads * hd;        // (kKeys, head_dim + 1)
  float* v_s = k_s + kKeys * (hd + 1);           // (kKeys, head_dim)

  const int group = s.n_heads / s.n_kv_heads;
  const int chunks = (group + kHeads - 1) / kHeads;
  const int kvh = blockIdx.y / chunks;
  const int h0 = kvh * group + (blockIdx.y % chunks) * kHeads;
  const int nh = min(kHeads, kvh * group + group - h0);
  const int kv_dim = s.n_kv_heads * hd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  const int first = tile_first_row[blockIdx.x];
  const int seq = t.row_seq[first];
  const int row = first + warp;
  const bool row_ok = row < t.n_rows && t.row_seq[row] == seq;
  const int n_keys = row_ok ? t.row_n_keys[row] : 0;
  // Rows of a tile are consecutive new tokens, so the last valid row sees
  // the most keys.
  int tile_keys = 0;
  for (int r = first; r < first + kRows && r < t.n_rows && t.row_seq[r] == seq; ++r) {
    tile_keys = max(tile_keys, t.row_n_keys[r]);
  }
  const int64_t cap = t.seq_capacity[seq];
  const int32_t* key_slot = t.key_slot + t.seq_key_begin[seq];
  const int32_t* key_pos = t.key_position + t.seq_key_begin[seq];
  const KT* k_layer = static_cast<const KT*>(t.seq_kv[seq]) + 2 * layer * cap * kv_dim;
  const KT* v_layer = k_layer + cap * kv_dim;  // (capacity, kv_dim)

  // Queries of the tile, pre-scaled.
  for (int i = threadIdx.x; i < kRows * kHeads * hd; i += blockDim.x) {
    const int r = i / (kHeads * hd), h = (i / hd) % kHeads, d = i % hd;
    const bool ok = first + r < t.n_rows && t.row_seq[first + r] == seq && h < nh;
    q_s[i] = ok ? q[(static_cast<int64_t>(first + r) * s.n_heads + h0 + h) * hd + d] * s.scale
                : 0.f;
  }

  float m[kHeads], l[kHeads], acc[kHeads][D];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int u = 0; u < D; ++u) acc[h][u] = 0.f;
  }

  for (int kt = 0; kt < tile_keys; kt += kKeys) {
    __syncthreads();  // the previous tile is consumed (and q_s written)
    for (int i = threadIdx.x; i < kKeys * half; i += blockDim.x) {
      const int j = i / half, p = i % half;
      const int d0 = s.rope_neox ? p : 2 * p, d1 = s.rope_neox ? p + half : 2 * p + 1;
      float k0 = 0.f, k1 = 0.f, v0 = 0.f, v1 = 0.f;
      if (kt + j < tile_keys) {
        const int64_t slot = key_slot[kt + j];
        const int64_t pos = key_pos[kt + j];
        const KT* kr = k_layer + slot * kv_dim + kvh * hd;
        const KT* vr = v_layer + slot * kv_dim + kvh * hd;
        const float x0 = ToFloat(kr[d0]), x1 = ToFloat(kr[d1]);
        const float c = rope_cos[pos * half + p], sn = rope_sin[pos * half + p];
        k0 = x0 * c - x1 * sn;
        k1 = x0 * sn + x1 * c;
        v0 = ToFloat(vr[d0]);
        v1 = ToFloat(vr[d1]);
      }
      k_s[j * (hd + 1) + d0] = k0;
      k_s[j * (hd + 1) + d1] = k1;
      v_s[j * hd + d0] = v0;
      v_s[j * hd + d1] = v1;
    }
    __syncthreads();
    if (kt >= n_keys) continue;  // nothing of this tile is visible to the row
    const bool visible = kt + lane < n_keys;
    float score[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) score[h] = 0.f;
    const float* kr = k_s + lane * (hd + 1);
    const float* qr = q_s + warp * kHeads * hd;
    for (int d = 0; d < hd; ++d) {
      const float kd = kr[d];
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        if (h < nh) score[h] += qr[h * hd + d] * kd;  // block-uniform: MHA uses one head
      }
    }
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      if (h >= nh) continue;
      const float sc = visible ? score[h] : -INFINITY;
      const float m_new = fmaxf(m[h], WarpMax(sc));  // finite: key kt is visible
      const float corr = expf(m[h] - m_new);
      const float w = visible ? expf(sc - m_new) : 0.f;
      l[h] = l[h] * corr + WarpSum(w);
      m[h] = m_new;
#pragma unroll
      for (int u = 0; u < D; ++u) acc[h][u] *= corr;
      for (int j = 0; j < kKeys; ++j) {
        const float wj = __shfl_sync(0xffffffffu, w, j);
#pragma unroll
        for (int u = 0; u < D; ++u) {
          const int d = lane + 32 * u;
          if (d < hd) acc[h][u] += wj * v_s[j * hd + d];
        }
      }
    }
  }
  if (!row_ok) return;
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    if (h >= nh) continue;
    OT* o = out + (static_cast<int64_t>(row) * s.n_heads + h0 + h) * hd;  // (head_dim)
#pragma unroll
    for (int u = 0; u < D; ++u) {
      const int d = lane + 32 * u;
      if (d < hd) o[d] = FromFloat<OT>(acc[h][u] / l[h]);
    }
  }
}

template <typename KT, typename OT>
cudaError_t LaunchTyped(int d, dim3 grid, size_t shared, const float* q, const StepTables& t,
                        const AttentionShape& s, int layer, const float* rope_cos,
                        const float* rope_sin, const int32_t* tile_first_row, OT* out,
                        cudaStream_t stream) {
  const dim3 block(kRows * 32);
  if (d == 1) {
    PrefillAttentionKernel<KT, OT, 1><<<grid, block, shared, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, tile_first_row, out);
  } else if (d == 2) {
    PrefillAttentionKernel<KT, OT, 2><<<grid, block, shared, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, tile_first_row, out);
  } else {
    PrefillAttentionKernel<KT, OT, 4><<<grid, block, shared, stream>>>(
        q, t, s, layer, rope_cos, rope_sin, tile_first_row, out);
  }
  return cudaGetLastError();
}

template <typename KT, typename OT, int D>
cudaError_t RaiseLimit() {
  return cudaFuncSetAttribute(PrefillAttentionKernel<KT, OT, D>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(SharedBytes(kMaxHeadDim)));
}

template <typename KT, typename OT>
cudaError_t RaiseLimits() {
  cudaError_t e = RaiseLimit<KT, OT, 1>();
  if (e == cudaSuccess) e = RaiseLimit<KT, OT, 2>();
  if (e == cudaSuccess) e = RaiseLimit<KT, OT, 4>();
  return e;
}

}  // namespace

bool PrefillAttentionSupported(const AttentionShape& s) {
  return s.head_dim % 2 == 0 && s.head_dim <= kMaxHeadDim && s.n_heads % s.n_kv_heads == 0;
}

cudaError_t PreparePrefillAttention() {
  cudaError_t e = cudaSuccess;
  DType types[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType kt : types) {
    for (DType ot : types) {
      if (e != cudaSuccess) return e;
      e = DispatchDType(kt, [&](auto ktag) {
        return DispatchDType(ot, [&](auto otag) {
          return RaiseLimits<decltype(ktag), decltype(otag)>();
        });
      });
    }
  }
  return e;
}

cudaError_t LaunchPrefillAttention(const float* q, const StepTables& t,
                                   const AttentionShape& s, int layer, DType kv_type,
                                   const float* rope_cos, const float* rope_sin,
                                   const int32_t* tile_first_row, int n_tiles,
                                   DType out_type, void* out, cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  if (!PrefillAttentionSupported(s)) return cudaErrorInvalidValue;
  const int group = s.n_heads / s.n_kv_heads;
  const dim3 grid(n_tiles, s.n_kv_heads * ((group + kHeads - 1) / kHeads));
  const int d = s.head_dim <= 32 ? 1 : s.head_dim <= 64 ? 2 : 4;
  const size_t shared = SharedBytes(s.head_dim);
  return DispatchDType(kv_type, [&](auto ktag) {
    return DispatchDType(out_type, [&](auto otag) {
      using OT = decltype(otag);
      return LaunchTyped<decltype(ktag), OT>(d, grid, shared, q, t, s, layer, rope_cos,
                                             rope_sin, tile_first_row,
                                             static_cast<OT*>(out), stream);
    });
  });
}

}  // namespace sinkserve::kernels
