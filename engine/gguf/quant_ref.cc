// Q8_0, Q4_0, F16, BF16 and type dispatch; k-quants are in quant_ref_k.cc.
#include "engine/gguf/quant_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "engine/gguf/fp16.h"

namespace sinkserve::engine {

void QuantizeRowQ8_0(const float* x, BlockQ8_0* y, int64_t k) {
  const int64_t nb = k / kQK8_0;
  for (int64_t i = 0; i < nb; i++) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; j++) {
      amax = std::max(amax, std::fabs(x[i * kQK8_0 + j]));
    }
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    for (int j = 0; j < kQK8_0; ++j) {
      y[i].qs[j] = static_cast<int8_t>(std::round(x[i * kQK8_0 + j] * id));
    }
  }
}

void DequantizeRowQ8_0(const BlockQ8_0* x, float* y, int64_t k) {
  const int64_t nb = k / kQK8_0;
  for (int64_t i = 0; i < nb; i++) {
    const float d = HalfToFloat(x[i].d);
    for (int j = 0; j < kQK8_0; ++j) y[i * kQK8_0 + j] = x[i].qs[j] * d;
  }
}

void QuantizeRowQ4_0(const float* x, BlockQ4_0* y, int64_t k) {
  constexpr int qk = kQK4_0;
  const int64_t nb = k / qk;
  for (int64_t i = 0; i < nb; i++) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < qk; j++) {
      const float v = x[i * qk + j];
      if (amax < std::fabs(v)) {
        amax = std::fabs(v);
        max = v;
      }
    }
    // The largest magnitude maps to -8 exactly, so its sign picks which end
    // of [-8, 7] gets the extra level.
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = FloatToHalf(d);
    for (int j = 0; j < qk / 2; ++j) {
      const float x0 = x[i * qk + 0 + j] * id;
      const float x1 = x[i * qk + qk / 2 + j] * id;
      // ggml truncates through int8_t after adding 8.5; x0 >= -8 keeps the
      // sum non-negative so this is a round-half-up.
      const uint8_t xi0 = std::min<int>(15, static_cast<int8_t>(x0 + 8.5f));
      const uint8_t xi1 = std::min<int>(15, static_cast<int8_t>(x1 + 8.5f));
      y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

void DequantizeRowQ4_0(const BlockQ4_0* x, float* y, int64_t k) {
  constexpr int qk = kQK4_0;
  const int64_t nb = k / qk;
  for (int64_t i = 0; i < nb; i++) {
    const float d = HalfToFloat(x[i].d);
    for (int j = 0; j < qk / 2; ++j) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8;
      const int x1 = (x[i].qs[j] >> 4) - 8;
      y[i * qk + j + 0] = x0 * d;
      y[i * qk + j + qk / 2] = x1 * d;
    }
  }
}

void QuantizeRowF16(const float* x, uint16_t* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = FloatToHalf(x[i]);
}
void DequantizeRowF16(const uint16_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = HalfToFloat(x[i]);
}
void QuantizeRowBF16(const float* x, uint16_t* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = FloatToBf16(x[i]);
}
void DequantizeRowBF16(const uint16_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = Bf16ToFloat(x[i]);
}

namespace {

// Debian's Abseil is built with its own string_view, which is what StrCat
// and Status accept; std::string_view must be converted explicitly.
absl::string_view Sv(std::string_view s) { return {s.data(), s.size()}; }

// Runs a block quantizer one block at a time through an aligned local block,
// so callers may pass any byte pointer (file buffers need not be aligned).
template <typename Block, int kBlock>
void QuantizeBlocks(void (*fn)(const float*, Block*, int64_t), const float* x,
                    int64_t n, uint8_t* out) {
  Block block;
  for (int64_t i = 0; i < n / kBlock; ++i) {
    fn(x + i * kBlock, &block, kBlock);
    std::memcpy(out + i * sizeof(Block), &block, sizeof(Block));
  }
}

template <typename Block, int kBlock>
void DequantizeBlocks(void (*fn)(const Block*, float*, int64_t),
                      const uint8_t* in, int64_t n, float* y) {
  Block block;
  for (int64_t i = 0; i < n / kBlock; ++i) {
    std::memcpy(&block, in + i * sizeof(Block), sizeof(Block));
    fn(&block, y + i * kBlock, kBlock);
  }
}

absl::Status CheckRow(GgmlType type, int64_t n) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr || !HasQuantRef(type)) {
    return absl::UnimplementedError(
        absl::StrCat("no reference quantization for ggml type ",
                     traits ? std::string(traits->name)
                            : absl::StrCat(static_cast<uint32_t>(type))));
  }
  if (GgmlRowBytes(*traits, n) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", n, " elements is not a multiple of the ",
                     Sv(traits->name), " block size ", traits->block_size));
  }
  return absl::OkStatus();
}

}  // namespace

bool HasQuantRef(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::Status QuantizeRow(GgmlType type, const float* x, int64_t n, void* out) {
  const absl::Status status = CheckRow(type, n);
  if (!status.ok()) return status;
  auto* bytes = static_cast<uint8_t*>(out);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(bytes, x, n * sizeof(float));
      break;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h =
            type == GgmlType::kF16 ? FloatToHalf(x[i]) : FloatToBf16(x[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      break;
    case GgmlType::kQ8_0:
      QuantizeBlocks<BlockQ8_0, kQK8_0>(QuantizeRowQ8_0, x, n, bytes);
      break;
    case GgmlType::kQ4_0:
      QuantizeBlocks<BlockQ4_0, kQK4_0>(QuantizeRowQ4_0, x, n, bytes);
      break;
    case GgmlType::kQ4_K:
      QuantizeBlocks<BlockQ4_K, kQK_K>(QuantizeRowQ4_K, x, n, bytes);
      break;
    case GgmlType::kQ6_K:
      QuantizeBlocks<BlockQ6_K, kQK_K>(QuantizeRowQ6_K, x, n, bytes);
      break;
    default:
      break;  // CheckRow rejected it
  }
  return absl::OkStatus();
}

absl::Status DequantizeRow(GgmlType type, const void* in, int64_t n, float* y) {
  const absl::Status status = CheckRow(type, n);
  if (!status.ok()) return status;
  const auto* bytes = static_cast<const uint8_t*>(in);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(y, bytes, n * sizeof(float));
      break;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        y[i] = type == GgmlType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
      }
      break;
    case GgmlType::kQ8_0:
      DequantizeBlocks<BlockQ8_0, kQK8_0>(DequantizeRowQ8_0, bytes, n, y);
      break;
    case GgmlType::kQ4_0:
      DequantizeBlocks<BlockQ4_0, kQK4_0>(DequantizeRowQ4_0, bytes, n, y);
      break;
    case GgmlType::kQ4_K:
      DequantizeBlocks<BlockQ4_K, kQK_K>(DequantizeRowQ4_K, bytes, n, y);
      break;
    case GgmlType::kQ6_K:
      DequantizeBlocks<BlockQ6_K, kQK_K>(DequantizeRowQ6_K, bytes, n, y);
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

}  // namespace sinkserve::engine
