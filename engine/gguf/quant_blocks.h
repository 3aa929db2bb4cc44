// Block layouts of the quantized ggml types sinkserve computes in, byte for
// byte as ggml-common.h defines them (files store these structs verbatim).
// Scales are IEEE half floats stored as raw uint16_t bits.
#ifndef SINKSERVE_ENGINE_GGUF_QUANT_BLOCKS_H_
#define SINKSERVE_ENGINE_GGUF_QUANT_BLOCKS_H_

#include <cstdint>

namespace sinkserve::engine {

inline constexpr int kQK4_0 = 32;
inline constexpr int kQK8_0 = 32;
inline constexpr int kQK_K = 256;    // super-block size of the k-quants
inline constexpr int kKScaleBytes = 12;

// x[j] = (nibble(j) - 8) * d; element j < 16 is the low nibble of qs[j],
// element j >= 16 the high nibble of qs[j - 16].
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "ggml block_q4_0");

// x[j] = qs[j] * d.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "ggml block_q8_0");

// 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales` (see
// ggml's get_scale_min_k4): x = d * sc * q - dmin * m, q a 4-bit value.
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144, "ggml block_q4_K");

// 16 sub-blocks of 16 with signed 8-bit scales: x = d * sc * (q - 32), q a
// 6-bit value whose low 4 bits are in ql and high 2 bits in qh.
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "ggml block_q6_K");

// Activation blocks for k-quant dot products (never stored in files):
// x[j] = qs[j] * d; bsums[i] = sum of qs[16 i .. 16 i + 15].
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "ggml block_q8_K");

}  // namespace sinkserve::engine

#endif  // SINKSERVE_ENGINE_GGUF_QUANT_BLOCKS_H_
