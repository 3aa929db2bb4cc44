// GGUF weight rows -> device F32 / F16 / BF16 at load, one thread per output
// element. Block formats as engine/gguf/quant_blocks.h (ggml-common.h).
#include <cstdint>

#include "kernels/device_types.cuh"

namespace sinkserve::kernels {
namespace {

// ggml type ids (engine/gguf/ggml_types.h).
constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ8_0 = 8,
                   kGgmlQ4_K = 12, kGgmlQ6_K = 14, kGgmlBF16 = 30;

__device__ __forceinline__ float Half(const uint8_t* p) {
  // Blocks are only 2-byte aligned in general: read the half as two bytes.
  const uint16_t bits = static_cast<uint16_t>(p[0] | (p[1] << 8));
  return __half2float(__ushort_as_half(bits));
}

// Element j of a row in ggml layout.
__device__ float Element(uint32_t type, const uint8_t* row, int64_t j) {
  switch (type) {
    case kGgmlF32:
      return reinterpret_cast<const float*>(row)[j];
    case kGgmlF16:
      return Half(row + 2 * j);
    case kGgmlBF16: {
      const uint32_t bits = static_cast<uint32_t>(row[2 * j] | (row[2 * j + 1] << 8)) << 16;
      return __uint_as_float(bits);
    }
    case kGgmlQ8_0: {  // 34-byte blocks: d, qs[32]
      const uint8_t* b = row + (j / 32) * 34;
      return Half(b) * static_cast<float>(static_cast<int8_t>(b[2 + j % 32]));
    }
    case kGgmlQ4_0: {  // 18-byte blocks: d, qs[16]; low nibbles first
      const uint8_t* b = row + (j / 32) * 18;
      const int e = j % 32;
      const int q = e < 16 ? (b[2 + e] & 0xF) : (b[2 + e - 16] >> 4);
      return Half(b) * static_cast<float>(q - 8);
    }
    case kGgmlQ4_K: {  // 144-byte blocks: d, dmin, scales[12], qs[128]
      const uint8_t* b = row + (j / 256) * 144;
      const int e = j % 256;
      const int chunk = e / 64;        // 64 elements share 32 bytes of qs
      const int hi = (e % 64) / 32;    // second 32: high nibbles
      const int l = e % 32;
      const int is = 2 * chunk + hi;   // sub-block (get_scale_min_k4)
      const uint8_t* sc = b + 4;
      int s, m;
      if (is < 4) {
        s = sc[is] & 63;
        m = sc[is + 4] & 63;
      } else {
        s = (sc[is + 4] & 0xF) | ((sc[is - 4] >> 6) << 4);
        m = (sc[is + 4] >> 4) | ((sc[is] >> 6) << 4);
      }
      const uint8_t qb = b[16 + 32 * chunk + l];
      const int q = hi ? (qb >> 4) : (qb & 0xF);
      // Explicit roundings: no fused multiply-add, so the values equal the
      // scalar reference's (quant_ref_k.cc) bit for bit.
      return __fsub_rn(__fmul_rn(__fmul_rn(Half(b), s), q), __fmul_rn(Half(b + 2), m));
    }
    case kGgmlQ6_K: {  // 210-byte blocks: ql[128], qh[64], scales[16], d
      const uint8_t* b = row + (j / 256) * 210;
      const int e = j % 256;
      const int n = e / 128;           // half of the super-block
      const int r = e % 128;
      const int quarter = r / 32;      // q1..q4 of the reference loop
      const int l = r % 32;
      const uint8_t* ql = b + 64 * n;
      const uint8_t* qh = b + 128 + 32 * n;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * n;
      const int low = quarter == 0   ? (ql[l] & 0xF)
                      : quarter == 1 ? (ql[l + 32] & 0xF)
                      : quarter == 2 ? (ql[l] >> 4)
                                     : (ql[l + 32] >> 4);
      const int high = (qh[l] >> (2 * quarter)) & 3;
      const int q = (low | (high << 4)) - 32;
      return Half(b + 208) * sc[l / 16 + 2 * quarter] * q;
    }
  }
  return 0.f;
}

template <typename T>
__global__ void DequantizeKernel(uint32_t type, const uint8_t* in, int64_t rows, int64_t cols,
                                 int64_t row_bytes, T* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols;
  out[i] = FromFloat<T>(Element(type, in + r * row_bytes, i % cols));
}

}  // namespace

cudaError_t LaunchDequantize(uint32_t ggml_type, const void* in, int64_t rows, int64_t cols,
                             int64_t row_bytes, DType out_type, void* out,
                             cudaStream_t stream) {
  switch (ggml_type) {
    case kGgmlF32:
    case kGgmlF16:
    case kGgmlBF16:
    case kGgmlQ8_0:
    case kGgmlQ4_0:
    case kGgmlQ4_K:
    case kGgmlQ6_K:
      break;
    default:
      return cudaErrorInvalidValue;
  }
  if (rows * cols == 0) return cudaSuccess;
  return DispatchDType(out_type, [&](auto tag) {
    using T = decltype(tag);
    DequantizeKernel<T><<<Blocks(rows * cols, 256), 256, 0, stream>>>(
        ggml_type, static_cast<const uint8_t*>(in), rows, cols, row_bytes,
        static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace sinkserve::kernels
