#include "engine/gguf/quant_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/gguf/fp16.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

std::vector<float> Gaussian(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

double RelativeRmsError(const std::vector<float>& x,
                        const std::vector<float>& y) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    ref += double(x[i]) * x[i];
  }
  return std::sqrt(err / ref);
}

// --- F16 / BF16 --------------------------------------------------------------

TEST(Fp16Test, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
      continue;
    }
    EXPECT_EQ(FloatToHalf(f), h) << "half bits " << h << " value " << f;
  }
}

TEST(Fp16Test, KnownValues) {
  // From the IEEE 754 binary16 definition.
  EXPECT_EQ(FloatToHalf(1.f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.f), 0xc000);
  EXPECT_EQ(FloatToHalf(0.5f), 0x3800);
  EXPECT_EQ(FloatToHalf(65504.f), 0x7bff);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToHalf(INFINITY), 0x7c00);
  EXPECT_EQ(FloatToHalf(-0.f), 0x8000);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
}

// The nearest half to `f` by brute force over the sorted positive halves,
// ties to the even bit pattern; values from 65520 up overflow to infinity.
uint16_t NearestHalfBruteForce(float f, const std::vector<double>& values) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= 65520.0) return sign | 0x7c00;
  size_t hi =
      std::lower_bound(values.begin(), values.end(), a) - values.begin();
  if (hi == values.size()) hi = values.size() - 1;
  const size_t lo = hi == 0 ? 0 : hi - 1;
  const double dlo = a - values[lo];
  const double dhi = values[hi] - a;
  const size_t best = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return sign | static_cast<uint16_t>(best);
}

TEST(Fp16Test, FloatToHalfIsNearestTiesToEven) {
  std::vector<double> values;  // value of positive half bit pattern i
  for (uint32_t h = 0; h <= 0x7bff; ++h) values.push_back(HalfToFloat(h));
  ASSERT_TRUE(std::is_sorted(values.begin(), values.end()));
  std::mt19937 rng(7);
  std::vector<float> inputs;
  for (int i = 0; i < 20000; ++i) {
    // Random bit patterns across the half range, plus exact midpoints.
    const int e = std::uniform_int_distribution<int>(-27, 16)(rng);
    inputs.push_back(
        std::ldexp(std::uniform_real_distribution<float>(-1, 1)(rng), e));
    const uint16_t h = std::uniform_int_distribution<int>(0, 0x7bfe)(rng);
    inputs.push_back(static_cast<float>((values[h] + values[h + 1]) / 2));
  }
  for (float f :
       {65519.f, 65520.f, 65536.f, 1e9f, 2.9802322e-08f, 2.98023259e-08f}) {
    inputs.push_back(f);
  }
  for (float f : inputs) {
    ASSERT_EQ(FloatToHalf(f), NearestHalfBruteForce(f, values)) << f;
  }
}

TEST(Bf16Test, NearestTiesToEvenAndNan) {
  std::mt19937 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f))));
      continue;
    }
    // Candidates: truncation and the next bf16 up in magnitude.
    const uint16_t lo = u >> 16;
    const uint16_t hi = lo + 1;
    if (std::isinf(f)) {
      EXPECT_EQ(FloatToBf16(f), lo);
      continue;
    }
    // Past the largest finite bf16, the next value up is infinity, which
    // IEEE rounding treats as 2^128 when picking the nearest.
    double hi_value = Bf16ToFloat(hi);
    if (std::isinf(hi_value)) hi_value = std::copysign(std::ldexp(1.0, 128), f);
    const double dlo = std::fabs(double(Bf16ToFloat(lo)) - f);
    const double dhi = std::fabs(hi_value - f);
    const uint16_t want = dlo < dhi   ? lo
                          : dhi < dlo ? hi
                                      : (lo % 2 == 0 ? lo : hi);
    ASSERT_EQ(FloatToBf16(f), want) << f;
  }
  EXPECT_EQ(FloatToBf16(1.f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
}

// --- Q8_0
// ----------------------------------------------------------------------

TEST(QuantRefTest, Q8_0ExactBlock) {
  // amax 63.5 gives d = 0.5 exactly, so x = q * 0.5 quantizes losslessly.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = (j - 16) * 0.5f;
  x[31] = 63.5f;
  BlockQ8_0 b;
  QuantizeRowQ8_0(x.data(), &b, 32);
  EXPECT_EQ(b.d, 0x3800);  // 0.5
  for (int j = 0; j < 31; ++j) EXPECT_EQ(b.qs[j], j - 16);
  EXPECT_EQ(b.qs[31], 127);
  std::vector<float> y(32);
  DequantizeRowQ8_0(&b, y.data(), 32);
  EXPECT_EQ(x, y);
}

TEST(QuantRefTest, Q8_0ErrorBound) {
  const std::vector<float> x = Gaussian(32 * 64, 1);
  std::vector<BlockQ8_0> b(64);
  QuantizeRowQ8_0(x.data(), b.data(), x.size());
  std::vector<float> y(x.size());
  DequantizeRowQ8_0(b.data(), y.data(), y.size());
  for (int i = 0; i < 64; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(x[32 * i + j]));
    // Half a step, plus up to 127 steps times fp16's relative error in d.
    const float bound = amax / 127 * (0.5f + 127.f / 2048);
    for (int j = 0; j < 32; ++j) {
      EXPECT_LE(std::fabs(x[32 * i + j] - y[32 * i + j]), bound);
    }
  }
}

// --- Q4_0
// ----------------------------------------------------------------------

TEST(QuantRefTest, Q4_0LayoutAndExactBlock) {
  // The largest magnitude is -8 so d = 1 and integers in [-8, 7] are exact.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>((j * 5) % 16 - 8);
  x[0] = -8;
  BlockQ4_0 b;
  QuantizeRowQ4_0(x.data(), &b, 32);
  EXPECT_EQ(HalfToFloat(b.d), 1.f);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(b.qs[j] & 0xF, x[j] + 8) << j;      // element j: low nibble
    EXPECT_EQ(b.qs[j] >> 4, x[j + 16] + 8) << j;  // element j + 16: high
  }
  std::vector<float> y(32);
  DequantizeRowQ4_0(&b, y.data(), 32);
  EXPECT_EQ(x, y);
}

TEST(QuantRefTest, Q4_0ErrorBound) {
  const std::vector<float> x = Gaussian(32 * 64, 2);
  std::vector<BlockQ4_0> b(64);
  QuantizeRowQ4_0(x.data(), b.data(), x.size());
  std::vector<float> y(x.size());
  DequantizeRowQ4_0(b.data(), y.data(), y.size());
  for (int i = 0; i < 64; ++i) {
    float amax = 0;
    for (int j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(x[32 * i + j]));
    // The end opposite the max can be a whole step off (8 clamps to 7).
    const float bound = amax / 8 * (1.f + 8.f / 2048);
    for (int j = 0; j < 32; ++j) {
      EXPECT_LE(std::fabs(x[32 * i + j] - y[32 * i + j]), bound);
    }
  }
}

// --- Q4_K
// ----------------------------------------------------------------------

// Packs 6-bit scales and mins as ggml-common.h describes block_q4_K.
void PackQ4KScales(const int sc[8], const int m[8], uint8_t out[12]) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 4; ++j) {
    out[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    out[j + 8] =
        static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
}

TEST(QuantRefTest, Q4_KDequantizesItsLayout) {
  int sc[8], m[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = 5 + 7 * j;  // up to 54: uses the high bits for j >= 4
    m[j] = 63 - 6 * j;
  }
  BlockQ4_K b;
  b.d = FloatToHalf(0.25f);
  b.dmin = FloatToHalf(0.125f);
  PackQ4KScales(sc, m, b.scales);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, mm;
    GetScaleMinK4(j, b.scales, &s, &mm);
    EXPECT_EQ(s, sc[j]);
    EXPECT_EQ(mm, m[j]);
  }
  // Element e of sub-block j: 64-element chunk j / 2, low nibble if j even.
  auto q_of = [](int e) { return (e * 7 + 3) % 16; };
  for (int chunk = 0; chunk < 4; ++chunk) {
    for (int l = 0; l < 32; ++l) {
      b.qs[32 * chunk + l] = static_cast<uint8_t>(
          q_of(64 * chunk + l) | (q_of(64 * chunk + 32 + l) << 4));
    }
  }
  std::vector<float> y(256);
  DequantizeRowQ4_K(&b, y.data(), 256);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    EXPECT_EQ(y[e], 0.25f * sc[j] * q_of(e) - 0.125f * m[j]) << e;
  }
}

TEST(QuantRefTest, Q4_KRoundTrip) {
  const std::vector<float> x = Gaussian(256 * 32, 4, 0.02f);
  std::vector<BlockQ4_K> b(32);
  QuantizeRowQ4_K(x.data(), b.data(), x.size());
  std::vector<float> y(x.size());
  DequantizeRowQ4_K(b.data(), y.data(), y.size());
  // 16 levels over ~4.5 sigma per sub-block: about 0.3 sigma steps, so an
  // rms error near 0.3 / sqrt(12) ~ 0.09; the fitted min and scale bring
  // ggml's Q4_K to ~0.071 on Gaussian data.
  EXPECT_LT(RelativeRmsError(x, y), 0.08);
}

TEST(QuantRefTest, Q4_KZeros) {
  std::vector<float> x(256, 0.f), y(256, 1.f);
  BlockQ4_K b;
  QuantizeRowQ4_K(x.data(), &b, 256);
  DequantizeRowQ4_K(&b, y.data(), 256);
  for (float v : y) EXPECT_EQ(v, 0.f);
}

// --- Q6_K
// ----------------------------------------------------------------------

TEST(QuantRefTest, Q6_KDequantizesItsLayout) {
  BlockQ6_K b;
  b.d = FloatToHalf(0.5f);
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<int8_t>(i * 9 - 70);
  // 6-bit q of element e; in each 128 half: element l + 32 k (k = 0..3) has
  // its low bits in ql[l + 32 (k % 2)] (nibble k / 2) and high bits in
  // qh[l] bits 2k..2k+1.
  auto q_of = [](int e) { return (e * 11 + 5) % 64; };
  std::memset(b.ql, 0, sizeof(b.ql));
  std::memset(b.qh, 0, sizeof(b.qh));
  for (int e = 0; e < 256; ++e) {
    const int half = e / 128, r = e % 128, k = r / 32, l = r % 32;
    const int q = q_of(e);
    b.ql[64 * half + l + 32 * (k % 2)] |=
        static_cast<uint8_t>((q & 0xF) << (4 * (k / 2)));
    b.qh[32 * half + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
  }
  std::vector<float> y(256);
  DequantizeRowQ6_K(&b, y.data(), 256);
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 0.5f * b.scales[e / 16] * (q_of(e) - 32)) << e;
  }
}

TEST(QuantRefTest, Q6_KRoundTrip) {
  const std::vector<float> x = Gaussian(256 * 32, 5, 3.f);
  std::vector<BlockQ6_K> b(32);
  QuantizeRowQ6_K(x.data(), b.data(), x.size());
  std::vector<float> y(x.size());
  DequantizeRowQ6_K(b.data(), y.data(), y.size());
  // 64 levels over ~2 x 2 sigma per 16 values: steps ~0.07 sigma, so an rms
  // error near 0.02.
  EXPECT_LT(RelativeRmsError(x, y), 0.03);
}

// --- Q8_K
// ----------------------------------------------------------------------

TEST(QuantRefTest, Q8_KSumsAndScale) {
  const std::vector<float> x = Gaussian(512, 6);
  std::vector<BlockQ8_K> b(2);
  QuantizeRowQ8_K(x.data(), b.data(), 512);
  std::vector<float> y(512);
  DequantizeRowQ8_K(b.data(), y.data(), 512);
  for (int i = 0; i < 2; ++i) {
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += b[i].qs[16 * g + k];
      EXPECT_EQ(b[i].bsums[g], sum);
    }
    for (int j = 0; j < 256; ++j) {
      EXPECT_LE(std::fabs(x[256 * i + j] - y[256 * i + j]),
                std::fabs(b[i].d) * 0.5f + 1e-6f);
    }
  }
}

// --- Dispatch
// -------------------------------------------------------------------

TEST(QuantRefTest, RowDispatchMatchesTypedFunctionsAtAnyAlignment) {
  const std::vector<float> x = Gaussian(512, 8);
  for (GgmlType type :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
        GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    const int64_t bytes =
        GgmlRowBytes(*FindGgmlType(static_cast<uint32_t>(type)), 512);
    std::vector<uint8_t> aligned(bytes + 8), shifted(bytes + 8);
    ASSERT_TRUE(QuantizeRow(type, x.data(), 512, aligned.data()).ok());
    ASSERT_TRUE(QuantizeRow(type, x.data(), 512, shifted.data() + 1).ok());
    EXPECT_EQ(0, std::memcmp(aligned.data(), shifted.data() + 1, bytes));
    std::vector<float> y(512), z(512);
    ASSERT_TRUE(DequantizeRow(type, aligned.data(), 512, y.data()).ok());
    ASSERT_TRUE(DequantizeRow(type, shifted.data() + 1, 512, z.data()).ok());
    EXPECT_EQ(y, z);
    EXPECT_LT(RelativeRmsError(x, y), 0.12) << static_cast<int>(type);
  }
  // The typed Q6_K path gives the same bytes as the dispatcher.
  std::vector<BlockQ6_K> b(2);
  QuantizeRowQ6_K(x.data(), b.data(), 512);
  std::vector<uint8_t> bytes(2 * sizeof(BlockQ6_K));
  ASSERT_TRUE(QuantizeRow(GgmlType::kQ6_K, x.data(), 512, bytes.data()).ok());
  EXPECT_EQ(0, std::memcmp(bytes.data(), b.data(), bytes.size()));
}

TEST(QuantRefTest, RowDispatchErrors) {
  std::vector<float> x(300);
  std::vector<uint8_t> out(4096);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ4_K, x.data(), 300, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ8_0, x.data(), 33, out.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ5_K, x.data(), 256, out.data()).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(DequantizeRow(GgmlType::kIQ2_XS, out.data(), 256, x.data()).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(HasQuantRef(GgmlType::kQ6_K));
  EXPECT_FALSE(HasQuantRef(GgmlType::kQ2_K));
}

}  // namespace
}  // namespace sinkserve::engine
