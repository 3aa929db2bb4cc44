#include "engine/cpu/vec_ops.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "engine/gguf/fp16.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// Lengths around every vector width and its multiples, plus ragged tails.
const int64_t kLengths[] = {0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 4099};

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(VecOpsTest, TargetIsNamed) {
  ASSERT_NE(VecOpsTarget(), nullptr);
  EXPECT_STRNE(VecOpsTarget(), "");
}

TEST(VecOpsTest, DotMatchesDouble) {
  for (int64_t n : kLengths) {
    const auto a = Random(n, 1), b = Random(n, 2);
    double want = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      want += static_cast<double>(a[i]) * b[i];
      mag += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), want, 1e-6 * mag + 1e-30) << "n=" << n;
  }
}

TEST(VecOpsTest, AxpyScaleAddMatchScalarLoops) {
  for (int64_t n : kLengths) {
    const auto x = Random(n, 3), y0 = Random(n, 4);
    auto y = y0;
    Axpy(0.75f, x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {  // fused or not: one rounding apart
      EXPECT_NEAR(y[i], y0[i] + 0.75f * x[i], 1e-6f * (std::fabs(y0[i]) + std::fabs(x[i])));
    }

    auto s = x;
    Scale(s.data(), -2.5f, n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(s[i], x[i] * -2.5f);

    std::vector<float> sum(n);
    Add(x.data(), y0.data(), sum.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(sum[i], x[i] + y0[i]);
    auto alias = x;  // out aliasing an input
    Add(alias.data(), y0.data(), alias.data(), n);
    EXPECT_EQ(alias, sum);
  }
}

TEST(VecOpsTest, SumSquaresIsDoubleAccurate) {
  for (int64_t n : kLengths) {
    const auto x = Random(n, 5, 100.0f);
    double want = 0;
    for (float v : x) want += static_cast<double>(v) * v;
    EXPECT_NEAR(SumSquares(x.data(), n), want, 1e-12 * want + 1e-30) << "n=" << n;
  }
}

TEST(VecOpsTest, RmsNormMatchesScalar) {
  for (int64_t n : kLengths) {
    if (n == 0) continue;
    const auto x = Random(n, 6, 3.0f), w = Random(n, 7);
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
    std::vector<float> out(n), unweighted(n);
    RmsNorm(x.data(), w.data(), n, 1e-5f, out.data());
    RmsNorm(x.data(), nullptr, n, 1e-5f, unweighted.data());
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(out[i], x[i] * inv * w[i], 1e-5 * std::fabs(x[i] * inv * w[i]) + 1e-7);
      EXPECT_NEAR(unweighted[i], x[i] * inv, 1e-5 * std::fabs(x[i] * inv) + 1e-7);
    }
    auto in_place = x;
    RmsNorm(in_place.data(), w.data(), n, 1e-5f, in_place.data());
    EXPECT_EQ(in_place, out);
  }
}

TEST(VecOpsTest, MaxValue) {
  EXPECT_EQ(MaxValue(nullptr, 0), -std::numeric_limits<float>::infinity());
  for (int64_t n : kLengths) {
    if (n == 0) continue;
    for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
      auto x = Random(n, 8);
      x[at] = 1000.0f;
      EXPECT_EQ(MaxValue(x.data(), n), 1000.0f) << "n=" << n << " at=" << at;
    }
  }
}

TEST(VecOpsTest, SoftmaxMatchesDoubleAndSumsToOne) {
  for (int64_t n : kLengths) {
    if (n == 0) continue;
    auto x = Random(n, 9, 5.0f);
    if (n > 3) x[2] = 80.0f;  // large logits must not overflow
    double max = -1e300;
    for (float v : x) max = std::max<double>(max, v);
    double z = 0;
    for (float v : x) z += std::exp(v - max);
    auto p = x;
    Softmax(p.data(), n);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(x[i] - max) / z;
      EXPECT_NEAR(p[i], want, 2e-6 * want + 1e-12) << "n=" << n << " i=" << i;
      total += p[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST(VecOpsTest, LogSumExp) {
  EXPECT_EQ(LogSumExp(nullptr, 0), -std::numeric_limits<float>::infinity());
  for (int64_t n : kLengths) {
    if (n == 0) continue;
    const auto x = Random(n, 10, 10.0f);
    double max = -1e300;
    for (float v : x) max = std::max<double>(max, v);
    double z = 0;
    for (float v : x) z += std::exp(v - max);
    EXPECT_NEAR(LogSumExp(x.data(), n), max + std::log(z), 1e-5 * std::fabs(max) + 1e-5);
  }
  const float inf = std::numeric_limits<float>::infinity();
  const float all_neg_inf[3] = {-inf, -inf, -inf};
  EXPECT_EQ(LogSumExp(all_neg_inf, 3), -inf);
}

TEST(VecOpsTest, SiluMulMatchesScalarIncludingExtremes) {
  for (int64_t n : kLengths) {
    auto g = Random(n, 11, 4.0f);
    const auto up = Random(n, 12);
    if (n > 4) {
      g[0] = -200.0f;  // exp(200) overflows float
      g[1] = 200.0f;
      g[2] = 0.0f;
      g[3] = -90.0f;
    }
    auto out = g;
    SiluMul(out.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double gd = g[i];
      const double want = gd / (1.0 + std::exp(-gd)) * up[i];
      EXPECT_NEAR(out[i], want, 1e-5 * std::fabs(want) + 1e-30) << "g=" << g[i];
      EXPECT_FALSE(std::isnan(out[i]));
    }
  }
}

// Every one of the 65536 bit patterns (subnormals, inf, NaN), at offsets that
// put each in a vector body and in a scalar tail.
TEST(VecOpsTest, HalfAndBf16RowsWidenExactly) {
  std::vector<uint16_t> bits(65536 + 5);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  std::vector<float> out(bits.size());
  for (int64_t offset : {0, 3}) {
    const int64_t n = 65536 + 2 - offset;
    HalfToFloatRow(bits.data() + offset, out.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float want = HalfToFloat(bits[offset + i]);
      if (std::isnan(want)) {  // F16C quiets signalling NaNs; NaN is enough
        ASSERT_TRUE(std::isnan(out[i])) << "f16 bits " << bits[offset + i];
        continue;
      }
      ASSERT_EQ(FloatBits(out[i]), FloatBits(HalfToFloat(bits[offset + i])))
          << "f16 bits " << bits[offset + i];
    }
    Bf16ToFloatRow(bits.data() + offset, out.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(FloatBits(out[i]), FloatBits(Bf16ToFloat(bits[offset + i])))
          << "bf16 bits " << bits[offset + i];
    }
  }
}

}  // namespace
}  // namespace sinkserve::engine
