// Causal prefill attention on tensor cores, FlashAttention-2 style.
//
// Grid (query head, query tile). A tile is up to kFlashTileRows (64)
// consecutive rows of one sequence (StepPlan's tile table); warp w of the
// block owns rows 16w..16w+15 of it and one query head. The block walks the
// sequence's keys (context, then the chunk's own tokens: StepTables order)
// in tiles of kKeys: each key tile is gathered by slot from the KV arena,
// rotated by its cell's position (keys are stored pre-RoPE) in f32 and
// rounded back to the KV type in shared memory; values are copied as they
// are (cp.async). Each warp then computes S = Q K^T with mma.sync m16n8k16
// (f16 or bf16 operands, f32 accumulation), masks keys past each row's
// row_n_keys (the causal limit, exactly as the CUDA-core kernel reads it),
// keeps an online softmax per row in registers and accumulates O += P V with
// P reused from the S accumulators as MMA A operands. One pass over K and V.
//
// Rounding compared with the CUDA-core kernel (prefill_attention.cu): the
// scaled queries, the rotated keys and the softmax weights P are rounded to
// the KV type before their MMAs; everything else is f32.
#include <cmath>
#include <cstdint>

#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

constexpr int kWarps = kFlashTileRows / 16;  // one MMA row block (16 rows) per warp
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 64;  // keys per shared-memory tile
// Halves of padding per shared row: 16 bytes, so consecutive rows start 4
// banks apart and the 8 rows an MMA fragment (or an ldmatrix phase) touches
// hit 32 distinct banks.
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

// Raw 16-bit element <-> f32 for the two MMA types.
template <typename KT>
__device__ __forceinline__ float BitsToFloat(uint16_t b);
template <>
__device__ __forceinline__ float BitsToFloat<__half>(uint16_t b) {
  return __half2float(__ushort_as_half(b));
}
template <>
__device__ __forceinline__ float BitsToFloat<__nv_bfloat16>(uint16_t b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}
template <typename KT>
__device__ __forceinline__ uint32_t FloatToBits(float x);
template <>
__device__ __forceinline__ uint32_t FloatToBits<__half>(float x) {
  return __half_as_ushort(__float2half_rn(x));
}
template <>
__device__ __forceinline__ uint32_t FloatToBits<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
// Two elements in one MMA register: the lower column in the low half.
template <typename KT>
__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  return FloatToBits<KT>(lo) | (FloatToBits<KT>(hi) << 16);
}

// d (16x8 f32) += a (16x16, row) * b (16x8, col).
template <typename KT>
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1);
template <>
__device__ __forceinline__ void Mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void Mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices, transposed on delivery: lanes 8i..8i+7 give the row
// addresses of matrix i; r[i] of lane l holds its elements (2(l%4), l/4) and
// (2(l%4)+1, l/4) — the B fragment of an MMA whose k runs along the rows.
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// 16 bytes global -> shared without registers; zero-filled when !valid
// (source size 0: nothing is read).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

__device__ __forceinline__ void Unpack8(uint4 r, uint16_t (&e)[8]) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    e[2 * i] = static_cast<uint16_t>(w[i] & 0xffffu);
    e[2 * i + 1] = static_cast<uint16_t>(w[i] >> 16);
  }
}

// Rotates x0, x1 by the angle with cosine c and sine sn, as the CUDA-core
// kernels and engine::RopeTable::Rotate do.
__device__ __forceinline__ void Rotate(float& x0, float& x1, float c, float sn) {
  const float y0 = x0 * c - x1 * sn;
  const float y1 = x0 * sn + x1 * c;
  x0 = y0;
  x1 = y1;
}

// Blocks per SM the register budget is sized for: the largest count whose
// cap (65536 / (blocks * 128) registers) still compiles without spills on
// sm_90 (head 128: 235 registers, head 64: 164).
constexpr int MinBlocks(int head_dim) {
  return head_dim == 128 ? 2 : head_dim == 64 ? 3 : 4;
}

// HD: head_dim (16, 32, 64 or 128). KT: KV and MMA operand type. OT: out.
template <typename KT, typename OT, int HD>
__global__ void __launch_bounds__(kThreads, MinBlocks(HD))
    FlashPrefillKernel(const float* q, StepTables t, AttentionShape s, int layer,
                       const float* rope_cos, const float* rope_sin,
                       const int32_t* tile_first_row, OT* out) {
  constexpr int kStride = HD + kPad;    // halves per shared row
  constexpr int kKSteps = HD / 16;      // MMA k-steps of Q K^T (over the head)
  constexpr int kDimTiles = HD / 8;     // MMA n-tiles of O (over the head)
  constexpr int kKeyTiles = kKeys / 8;  // MMA n-tiles of S (over the key tile)
  constexpr int kHalf = HD / 2;
  // A rotation work item is 8 rotation pairs of one key: 16 dims in two
  // 16-byte chunks, at dims (8c, 8c + half) for NeoX pairs (i, i + d/2) and
  // (16c, 16c + 8) for adjacent pairs (2i, 2i + 1); both use pairs 8c..8c+7.
  constexpr int kChunks = HD / 16;
  __shared__ __align__(16) uint16_t k_s[kKeys * kStride];  // (kKeys, HD + kPad) rotated keys
  __shared__ __align__(16) uint16_t v_s[kKeys * kStride];  // (kKeys, HD + kPad) values
  __shared__ int warp_keys_s[kWarps];                      // (kWarps) keys its rows see

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;  // MMA fragment row group, thread in group
  const int head = blockIdx.x;
  const int kvh = head / (s.n_heads / s.n_kv_heads);
  // The last tiles of a sequence see the most keys: start them first so the
  // short ones fill the tail of the grid.
  const int first = tile_first_row[gridDim.y - 1 - blockIdx.y];
  const int seq = t.row_seq[first];
  const int kv_dim = s.n_kv_heads * HD;

  // This thread's two rows in the MMA fragments: g and g + 8 of the warp's
  // 16. Rows past the sequence's chunk see no keys and are not written.
  int row[2], row_keys[2];
  bool row_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row[i] = first + warp * 16 + g + 8 * i;
    row_ok[i] = row[i] < t.n_rows && t.row_seq[row[i]] == seq;
    row_keys[i] = row_ok[i] ? t.row_n_keys[row[i]] : 0;
  }
  int warp_keys = max(row_keys[0], row_keys[1]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    warp_keys = max(warp_keys, __shfl_xor_sync(0xffffffffu, warp_keys, o));
  }
  if (lane == 0) warp_keys_s[warp] = warp_keys;

  // Queries as MMA A fragments (16 rows x 16 dims per k-step), pre-scaled by
  // scale * log2(e) so the scores come out in log2 units for exp2f.
  // qa[k][i + 2c]: row g + 8i, dims 16k + 2tq + 8c and the next.
  uint32_t qa[kKSteps][4];
  const float qscale = s.scale * kLog2e;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float* qr = q + (static_cast<int64_t>(row_ok[i] ? row[i] : 0) * s.n_heads + head) * HD;
#pragma unroll
    for (int k = 0; k < kKSteps; ++k) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float2 x = make_float2(0.f, 0.f);
        if (row_ok[i]) x = *reinterpret_cast<const float2*>(qr + 16 * k + 2 * tq + 8 * c);
        qa[k][i + 2 * c] = Pack<KT>(x.x * qscale, x.y * qscale);
      }
    }
  }

  const int64_t cap = t.seq_capacity[seq];
  const int32_t* key_slot = t.key_slot + t.seq_key_begin[seq];     // (keys of seq)
  const int32_t* key_pos = t.key_position + t.seq_key_begin[seq];  // (keys of seq)
  // (capacity, kv_dim) K then V of `layer`, offset to this KV head.
  const uint16_t* k_layer =
      static_cast<const uint16_t*>(t.seq_kv[seq]) + 2 * layer * cap * kv_dim + kvh * HD;
  const uint16_t* v_layer = k_layer + cap * kv_dim;

  float o[kDimTiles][4];  // O accumulators: rows g, g + 8 x dims 8n + 2tq, +1
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
  }
  float m[2] = {-INFINITY, -INFINITY};  // running max per row (log2 units)
  float l[2] = {0.f, 0.f};              // this thread's share of the row sums

  __syncthreads();  // warp_keys_s
  int tile_keys = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) tile_keys = max(tile_keys, warp_keys_s[w]);

  for (int kt = 0; kt < tile_keys; kt += kKeys) {
    __syncthreads();  // every warp is done with the previous tile
    // Values: raw copies; keys past the tile's are zeros, since a zero
    // weight times garbage (NaN) would still poison O.
    constexpr int kVCopies = kKeys * (HD / 8);  // 16-byte pieces of the value tile
#pragma unroll
    for (int u = 0; u < (kVCopies + kThreads - 1) / kThreads; ++u) {
      const int i = threadIdx.x + u * kThreads;
      if (kVCopies % kThreads != 0 && i >= kVCopies) break;
      const int j = i / (HD / 8), c = i % (HD / 8);
      const bool ok = kt + j < tile_keys;
      const int64_t slot = ok ? key_slot[kt + j] : 0;
      CpAsync16(&v_s[j * kStride + 8 * c], v_layer + slot * kv_dim + 8 * c, ok);
    }
    // Keys: gathered by slot, rotated by position in f32, rounded to KT. A
    // fixed trip count lets the compiler issue every item's loads up front.
    constexpr int kItems = kKeys * kChunks;
#pragma unroll
    for (int u = 0; u < (kItems + kThreads - 1) / kThreads; ++u) {
      const int i = threadIdx.x + u * kThreads;
      if (kItems % kThreads != 0 && i >= kItems) break;
      const int j = i / kChunks, c = i % kChunks;
      const int da = s.rope_neox ? 8 * c : 16 * c;
      const int db = s.rope_neox ? kHalf + 8 * c : 16 * c + 8;
      uint4 ra = make_uint4(0, 0, 0, 0), rb = make_uint4(0, 0, 0, 0);
      if (kt + j < tile_keys) {
        const int64_t slot = key_slot[kt + j], pos = key_pos[kt + j];
        const uint16_t* kr = k_layer + slot * kv_dim;  // (HD) pre-RoPE key
        ra = *reinterpret_cast<const uint4*>(kr + da);
        rb = *reinterpret_cast<const uint4*>(kr + db);
        // cos / sin of pairs 8c..8c+7 at this position: (head_dim / 2) per position.
        const float4* cp = reinterpret_cast<const float4*>(rope_cos + pos * kHalf + 8 * c);
        const float4* sp = reinterpret_cast<const float4*>(rope_sin + pos * kHalf + 8 * c);
        const float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
        const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        const float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        uint16_t ea[8], eb[8];
        Unpack8(ra, ea);
        Unpack8(rb, eb);
        float fa[8], fb[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          fa[e] = BitsToFloat<KT>(ea[e]);
          fb[e] = BitsToFloat<KT>(eb[e]);
        }
        if (s.rope_neox) {
#pragma unroll
          for (int p = 0; p < 8; ++p) Rotate(fa[p], fb[p], cs[p], sn[p]);
        } else {
#pragma unroll
          for (int p = 0; p < 4; ++p) {
            Rotate(fa[2 * p], fa[2 * p + 1], cs[p], sn[p]);
            Rotate(fb[2 * p], fb[2 * p + 1], cs[4 + p], sn[4 + p]);
          }
        }
        ra = make_uint4(Pack<KT>(fa[0], fa[1]), Pack<KT>(fa[2], fa[3]), Pack<KT>(fa[4], fa[5]),
                        Pack<KT>(fa[6], fa[7]));
        rb = make_uint4(Pack<KT>(fb[0], fb[1]), Pack<KT>(fb[2], fb[3]), Pack<KT>(fb[4], fb[5]),
                        Pack<KT>(fb[6], fb[7]));
      }
      *reinterpret_cast<uint4*>(&k_s[j * kStride + da]) = ra;
      *reinterpret_cast<uint4*>(&k_s[j * kStride + db]) = rb;
    }
    CpAsyncWaitAll();
    __syncthreads();
    if (kt >= warp_keys) continue;  // warp-uniform: the whole tile is past this warp's rows

    // S = Q K^T: sc[n] covers keys kt + 8n .. + 7; B fragments straight from
    // the key-major tile (key 8n + g, dims 16k + 2tq (+8) and the next).
    float sc[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[n][e] = 0.f;
    }
#pragma unroll
    for (int k = 0; k < kKSteps; ++k) {
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        const uint16_t* kp = &k_s[(8 * n + g) * kStride + 16 * k + 2 * tq];
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kp);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kp + 8);
        Mma<KT>(sc[n], qa[k], b0, b1);
      }
    }

    // Causal mask (row_n_keys) and online softmax. Element e of a fragment
    // is row g + 8 (e / 2), key kt + 8n + 2tq + (e % 2); a row's 64 scores
    // are spread over the 4 threads of its group.
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kt + 8 * n + 2 * tq + (e & 1);
        if (key >= row_keys[e / 2]) sc[n][e] = -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], sc[n][e]);
      }
    }
    float base[2], corr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      // A row with no visible key yet keeps m = -inf; subtracting 0 instead
      // of -inf keeps exp2f(-inf - base) = 0 rather than NaN.
      base[i] = mx[i] == -INFINITY ? 0.f : mx[i];
      corr[i] = exp2f(m[i] - base[i]);  // 0 while m is -inf
      m[i] = mx[i];
      l[i] *= corr[i];
    }
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[n][e] = exp2f(sc[n][e] - base[e / 2]);
        l[e / 2] += sc[n][e];
      }
    }
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }

    // O += P V. The S accumulators of key tiles 2kk and 2kk + 1 are exactly
    // the A fragment of keys 16kk..16kk+15; V's B fragments come transposed
    // from the key-major tile, two dim tiles per ldmatrix.x4: matrix i is
    // keys 16kk + 8 (i % 2) .. +7 at dims 16dp + 8 (i / 2) .. +7.
    const int mat = lane / 8, mrow = lane % 8;
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t pa[4] = {Pack<KT>(sc[2 * kk][0], sc[2 * kk][1]),
                              Pack<KT>(sc[2 * kk][2], sc[2 * kk][3]),
                              Pack<KT>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              Pack<KT>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDimTiles / 2; ++dp) {
        uint32_t vb[4];
        LdMatrixX4Trans(
            vb, &v_s[(16 * kk + mrow + 8 * (mat & 1)) * kStride + 16 * dp + 8 * (mat >> 1)]);
        Mma<KT>(o[2 * dp], pa, vb[0], vb[1]);
        Mma<KT>(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }

  // Row sums over the 4 threads of each group, then O / l into out.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (!row_ok[i]) continue;  // a valid row sees key 0, so l > 0
    const float inv = 1.f / l[i];
    OT* orow = out + (static_cast<int64_t>(row[i]) * s.n_heads + head) * HD;  // (head_dim)
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      orow[8 * n + 2 * tq] = FromFloat<OT>(o[n][2 * i] * inv);
      orow[8 * n + 2 * tq + 1] = FromFloat<OT>(o[n][2 * i + 1] * inv);
    }
  }
}

template <typename KT, typename OT>
cudaError_t LaunchTyped(dim3 grid, const float* q, const StepTables& t, const AttentionShape& s,
                        int layer, const float* rope_cos, const float* rope_sin,
                        const int32_t* tile_first_row, OT* out, cudaStream_t stream) {
  const dim3 block(kThreads);
  switch (s.head_dim) {
    case 16:
      FlashPrefillKernel<KT, OT, 16><<<grid, block, 0, stream>>>(q, t, s, layer, rope_cos,
                                                                  rope_sin, tile_first_row, out);
      break;
    case 32:
      FlashPrefillKernel<KT, OT, 32><<<grid, block, 0, stream>>>(q, t, s, layer, rope_cos,
                                                                  rope_sin, tile_first_row, out);
      break;
    case 64:
      FlashPrefillKernel<KT, OT, 64><<<grid, block, 0, stream>>>(q, t, s, layer, rope_cos,
                                                                  rope_sin, tile_first_row, out);
      break;
    case 128:
      FlashPrefillKernel<KT, OT, 128><<<grid, block, 0, stream>>>(
          q, t, s, layer, rope_cos, rope_sin, tile_first_row, out);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename KT>
cudaError_t LaunchKv(dim3 grid, const float* q, const StepTables& t, const AttentionShape& s,
                     int layer, const float* rope_cos, const float* rope_sin,
                     const int32_t* tile_first_row, DType out_type, void* out,
                     cudaStream_t stream) {
  return DispatchDType(out_type, [&](auto otag) {
    using OT = decltype(otag);
    return LaunchTyped<KT, OT>(grid, q, t, s, layer, rope_cos, rope_sin, tile_first_row,
                               static_cast<OT*>(out), stream);
  });
}

}  // namespace

bool FlashPrefillAttentionSupported(const AttentionShape& s, DType kv_type) {
  const bool dim_ok =
      s.head_dim == 16 || s.head_dim == 32 || s.head_dim == 64 || s.head_dim == 128;
  return (kv_type == DType::kF16 || kv_type == DType::kBF16) && dim_ok && s.n_kv_heads > 0 &&
         s.n_heads % s.n_kv_heads == 0;
}

cudaError_t LaunchFlashPrefillAttention(const float* q, const StepTables& t,
                                        const AttentionShape& s, int layer, DType kv_type,
                                        const float* rope_cos, const float* rope_sin,
                                        const int32_t* tile_first_row, int n_tiles,
                                        DType out_type, void* out, cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  // Tiles go on grid y (at most 65535): 4M rows per step, far past any chunk.
  if (!FlashPrefillAttentionSupported(s, kv_type) || n_tiles > 65535) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(s.n_heads, n_tiles);
  if (kv_type == DType::kF16) {
    return LaunchKv<__half>(grid, q, t, s, layer, rope_cos, rope_sin, tile_first_row, out_type,
                            out, stream);
  }
  return LaunchKv<__nv_bfloat16>(grid, q, t, s, layer, rope_cos, rope_sin, tile_first_row,
                                 out_type, out, stream);
}

}  // namespace sinkserve::kernels
