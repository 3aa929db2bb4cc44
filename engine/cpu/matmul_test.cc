#include "engine/cpu/matmul.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "engine/gguf/fp16.h"
#include "engine/gguf/ggml_types.h"
#include "engine/cpu/matmul_internal.h"
#include "engine/gguf/quant_blocks.h"
#include "engine/gguf/quant_ref.h"
#include "engine/cpu/thread_pool.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using matmul_internal::Isa;
using matmul_internal::KernelSet;

const GgmlType kTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
                           GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ6_K};

bool IsKQuant(GgmlType t) { return t == GgmlType::kQ4_K || t == GgmlType::kQ6_K; }
bool IsQ32(GgmlType t) { return t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0; }

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A weight matrix quantized with quant_ref, and its dequantized floats.
struct TestWeights {
  std::vector<uint8_t> bytes;  // (rows, row_bytes)
  std::vector<float> deq;      // (rows, cols)
  WeightMatrix w;
};

TestWeights MakeWeights(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  TestWeights t;
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  const int64_t row_bytes = GgmlRowBytes(*traits, cols);
  const std::vector<float> x = Random(rows * cols, seed);
  t.bytes.resize(rows * row_bytes);
  t.deq.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(QuantizeRow(type, x.data() + r * cols, cols, t.bytes.data() + r * row_bytes).ok());
    EXPECT_TRUE(DequantizeRow(type, t.bytes.data() + r * row_bytes, cols, t.deq.data() + r * cols)
                    .ok());
  }
  t.w.type = traits;
  t.w.data = t.bytes.data();
  t.w.rows = rows;
  t.w.cols = cols;
  t.w.row_bytes = row_bytes;
  return t;
}

// x (n, cols) as the kernels see it: quantized to Q8_0 / Q8_K by quant_ref
// and dequantized, or unchanged for float weights.
std::vector<float> KernelActivations(GgmlType type, const std::vector<float>& x, int64_t n,
                                     int64_t cols) {
  if (!IsKQuant(type) && !IsQ32(type)) return x;
  std::vector<float> out(n * cols);
  for (int64_t t = 0; t < n; ++t) {
    if (IsKQuant(type)) {
      std::vector<BlockQ8_K> blocks(cols / kQK_K);
      QuantizeRowQ8_K(x.data() + t * cols, blocks.data(), cols);
      DequantizeRowQ8_K(blocks.data(), out.data() + t * cols, cols);
    } else {
      std::vector<BlockQ8_0> blocks(cols / kQK8_0);
      QuantizeRowQ8_0(x.data() + t * cols, blocks.data(), cols);
      DequantizeRowQ8_0(blocks.data(), out.data() + t * cols, cols);
    }
  }
  return out;
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (matmul_internal::IsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

class MatMulTest : public testing::Test {
 protected:
  void SetUp() override { matmul_internal::SetMinNsPerThreadForTest(0); }  // always split
  void TearDown() override {
    matmul_internal::SetMinNsPerThreadForTest(-1);
    matmul_internal::ResetIsaForTest();
  }
};

// Every type, ISA and shape: the kernel's y against a float64 dot of the
// dequantized weights with the activations quantized as the kernel does
// (tight: only float rounding differs), against plain float activations
// (loose: activation quantization error), and bit-identical for 1 and 2
// threads.
TEST_F(MatMulTest, MatchesDequantizedReferenceForEveryTypeAndIsa) {
  ThreadPool one(1), two(2);
  for (GgmlType type : kTypes) {
    std::vector<int64_t> col_options;
    if (IsKQuant(type)) {
      col_options = {256, 768, 1024};
    } else if (IsQ32(type)) {
      col_options = {32, 96, 256, 544};
    } else {
      col_options = {1, 5, 16, 37, 100, 256, 2048};
    }
    for (int64_t cols : col_options) {
      for (int64_t rows : {1, 3, 13, 37}) {
        if (cols >= 2048 && rows < 37) continue;
        const TestWeights tw = MakeWeights(type, rows, cols, static_cast<uint32_t>(rows * cols));
        for (int64_t n : {1, 3, 17, 64}) {
          const std::vector<float> x = Random(n * cols, static_cast<uint32_t>(7 * n + cols));
          const std::vector<float> xq = KernelActivations(type, x, n, cols);
          std::vector<double> want(n * rows), want_float(n * rows), mag(n * rows);
          for (int64_t t = 0; t < n; ++t) {
            for (int64_t r = 0; r < rows; ++r) {
              double s = 0, sf = 0, m = 0;
              for (int64_t c = 0; c < cols; ++c) {
                const double wv = tw.deq[r * cols + c];
                s += wv * xq[t * cols + c];
                sf += wv * x[t * cols + c];
                m += std::fabs(wv * x[t * cols + c]);
              }
              want[t * rows + r] = s;
              want_float[t * rows + r] = sf;
              mag[t * rows + r] = m;
            }
          }
          for (Isa isa : SupportedIsas()) {
            matmul_internal::SetIsaForTest(isa);
            SCOPED_TRACE(testing::Message()
                         << "type=" << FindGgmlType(static_cast<uint32_t>(type))->name
                         << " isa=" << matmul_internal::ActiveKernels().name << " rows=" << rows
                         << " cols=" << cols << " n=" << n);
            std::vector<float> y1(n * rows, -1.0f), y2(n * rows, -2.0f);
            MatMul(tw.w, x.data(), n, y1.data(), &one);
            MatMul(tw.w, x.data(), n, y2.data(), &two);
            ASSERT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0)
                << "results depend on the thread count";
            for (int64_t i = 0; i < n * rows; ++i) {
              ASSERT_NEAR(y1[i], want[i], 1e-5 * mag[i] + 1e-6) << "output " << i;
              // Relative to sum |w x|, as the result itself may cancel to ~0.
              ASSERT_NEAR(y1[i], want_float[i], 1e-2 * mag[i] + 1e-6) << "output " << i;
            }
          }
        }
      }
    }
  }
}

// The SIMD activation quantizers are byte-identical to quant_ref, rounding
// ties included.
TEST_F(MatMulTest, ActivationQuantizersMatchQuantRef) {
  const int64_t cols = 1024;
  std::vector<std::vector<float>> inputs;
  inputs.push_back(Random(cols, 99));
  // Ties: amax 127 makes d = 1, so x * id = x exactly, on halves.
  std::vector<float> ties(cols);
  for (int64_t i = 0; i < cols; ++i) ties[i] = (i % 32 == 0) ? 127.0f : (i % 254) * 0.5f - 63.5f;
  inputs.push_back(ties);
  std::vector<float> zeros(cols, 0.0f);
  inputs.push_back(zeros);
  // Largest magnitude both negative and positive: the first one wins.
  std::vector<float> sign = Random(cols, 100);
  sign[5] = -9.0f;
  sign[9] = 9.0f;
  sign[300] = 9.0f;
  sign[301] = -9.0f;
  inputs.push_back(sign);

  for (Isa isa : SupportedIsas()) {
    matmul_internal::SetIsaForTest(isa);
    const KernelSet& k = matmul_internal::ActiveKernels();
    SCOPED_TRACE(k.name);
    for (const std::vector<float>& x : inputs) {
      std::vector<BlockQ8_0> ref0(cols / kQK8_0);
      QuantizeRowQ8_0(x.data(), ref0.data(), cols);
      std::vector<int8_t> qs(cols);
      std::vector<float> d(cols / 32);
      std::vector<int32_t> neg(cols / 32);
      k.quantize_q8_0(x.data(), cols, qs.data(), d.data(), neg.data());
      for (int64_t b = 0; b < cols / 32; ++b) {
        ASSERT_EQ(std::memcmp(qs.data() + 32 * b, ref0[b].qs, 32), 0) << "block " << b;
        ASSERT_EQ(d[b], HalfToFloat(ref0[b].d));
        int32_t sum = 0;
        for (int j = 0; j < 32; ++j) sum += ref0[b].qs[j];
        ASSERT_EQ(neg[b], -sum);
      }

      std::vector<BlockQ8_K> refk(cols / kQK_K);
      QuantizeRowQ8_K(x.data(), refk.data(), cols);
      std::vector<float> dk(cols / 256), dsums(cols / 32);
      std::vector<int16_t> bsums(cols / 16);
      k.quantize_q8_k(x.data(), cols, qs.data(), dk.data(), bsums.data(), dsums.data());
      for (int64_t b = 0; b < cols / 256; ++b) {
        ASSERT_EQ(std::memcmp(qs.data() + 256 * b, refk[b].qs, 256), 0) << "block " << b;
        ASSERT_EQ(dk[b], refk[b].d);
        ASSERT_EQ(std::memcmp(bsums.data() + 16 * b, refk[b].bsums, 32), 0);
        for (int j = 0; j < 8; ++j) {
          ASSERT_EQ(dsums[8 * b + j],
                    refk[b].d * static_cast<float>(refk[b].bsums[2 * j] + refk[b].bsums[2 * j + 1]));
        }
      }
    }
  }
}

// A prompt-sized batch over a matrix big enough for several row blocks and
// both split strategies (rows, and tokens when rows are few).
TEST_F(MatMulTest, LargeBatchesAndFewRowsAgreeAcrossThreads) {
  ThreadPool one(1), three(3);
  for (GgmlType type : kTypes) {
    for (int64_t rows : {2, 203}) {
      const int64_t cols = 512;
      const TestWeights tw = MakeWeights(type, rows, cols, 5);
      const int64_t n = 70;
      const std::vector<float> x = Random(n * cols, 6);
      std::vector<float> y1(n * rows), y3(n * rows);
      MatMul(tw.w, x.data(), n, y1.data(), &one);
      MatMul(tw.w, x.data(), n, y3.data(), &three);
      EXPECT_EQ(std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)), 0)
          << FindGgmlType(static_cast<uint32_t>(type))->name << " rows=" << rows;
      // Spot check against the dequantized weights.
      const std::vector<float> xq = KernelActivations(type, x, n, cols);
      for (int64_t t : {int64_t{0}, n - 1}) {
        for (int64_t r : {int64_t{0}, rows - 1}) {
          double s = 0, m = 0;
          for (int64_t c = 0; c < cols; ++c) {
            s += static_cast<double>(tw.deq[r * cols + c]) * xq[t * cols + c];
            m += std::fabs(static_cast<double>(tw.deq[r * cols + c]) * xq[t * cols + c]);
          }
          EXPECT_NEAR(y1[t * rows + r], s, 1e-5 * m + 1e-6);
        }
      }
    }
  }
}

// A token's outputs do not depend on the batch around it: decoding it alone
// gives the same bits as its row of a prefill batch.
TEST_F(MatMulTest, BatchInvariant) {
  ThreadPool two(2);
  // The second shape spans several packed row blocks of the AVX-512 Q8_0 /
  // Q4_0 batch path.
  for (auto [type, rows, cols] : std::vector<std::tuple<GgmlType, int64_t, int64_t>>{
           {GgmlType::kF32, 45, 160},   {GgmlType::kF16, 45, 160},  {GgmlType::kBF16, 45, 160},
           {GgmlType::kQ8_0, 45, 160},  {GgmlType::kQ4_0, 45, 160}, {GgmlType::kQ4_K, 45, 512},
           {GgmlType::kQ6_K, 45, 512},  {GgmlType::kQ8_0, 100, 4096},
           {GgmlType::kQ4_0, 100, 4096}}) {
    const TestWeights tw = MakeWeights(type, rows, cols, 21);
    const int64_t n = 19;
    const std::vector<float> x = Random(n * cols, 22);
    for (Isa isa : SupportedIsas()) {
      matmul_internal::SetIsaForTest(isa);
      std::vector<float> batch(n * rows), one(rows);
      MatMul(tw.w, x.data(), n, batch.data(), &two);
      for (int64_t t = 0; t < n; ++t) {
        MatMul(tw.w, x.data() + t * cols, 1, one.data(), &two);
        ASSERT_EQ(std::memcmp(one.data(), batch.data() + t * rows, rows * sizeof(float)), 0)
            << FindGgmlType(static_cast<uint32_t>(type))->name << " "
            << matmul_internal::ActiveKernels().name << " token " << t;
      }
    }
  }
}

TEST_F(MatMulTest, NullPoolAndEmptyInputs) {
  const TestWeights tw = MakeWeights(GgmlType::kQ8_0, 5, 64, 1);
  const std::vector<float> x = Random(64, 2);
  std::vector<float> y(5, 7.0f);
  MatMul(tw.w, x.data(), 0, y.data(), nullptr);
  EXPECT_EQ(y[0], 7.0f);  // n == 0 writes nothing
  MatMul(tw.w, x.data(), 1, y.data(), nullptr);
  EXPECT_NE(y[0], 7.0f);
}

// Fused products (Q/K/V, gate/up) give each output the bits of its own
// MatMul, for any thread count (the chunk claiming must neither skip nor
// repeat a row), and fall back to one by one for mixed types or widths.
TEST_F(MatMulTest, FusedEqualsSeparateBitForBit) {
  ThreadPool one(1), two(2), five(5);
  for (GgmlType type : kTypes) {
    const int64_t cols = IsKQuant(type) ? 512 : 96;
    const TestWeights a = MakeWeights(type, 200, cols, 21);
    const TestWeights b = MakeWeights(type, 37, cols, 22);
    const TestWeights c = MakeWeights(type, 64, cols, 23);
    const TestWeights other = MakeWeights(IsKQuant(type) ? GgmlType::kQ8_0 : GgmlType::kQ4_K,
                                          17, IsKQuant(type) ? cols : 256, 24);
    for (int64_t n : {1, 3, 40}) {
      const std::vector<float> x = Random(n * cols, 25);
      std::vector<float> ya(n * 200), yb(n * 37), yc(n * 64);
      MatMul(a.w, x.data(), n, ya.data(), &one);
      MatMul(b.w, x.data(), n, yb.data(), &one);
      MatMul(c.w, x.data(), n, yc.data(), &one);
      for (ThreadPool* pool : {&one, &two, &five}) {
        SCOPED_TRACE(testing::Message() << "type " << static_cast<int>(type) << " n " << n
                                        << " threads " << pool->num_threads());
        std::vector<float> fa(ya.size(), -1), fb(yb.size(), -1), fc(yc.size(), -1);
        const MatMulOutput outs[] = {{&a.w, fa.data()}, {&b.w, fb.data()}, {&c.w, fc.data()}};
        MatMulFused(outs, x.data(), n, pool);
        EXPECT_EQ(std::memcmp(fa.data(), ya.data(), ya.size() * sizeof(float)), 0);
        EXPECT_EQ(std::memcmp(fb.data(), yb.data(), yb.size() * sizeof(float)), 0);
        EXPECT_EQ(std::memcmp(fc.data(), yc.data(), yc.size() * sizeof(float)), 0);
        if (other.w.cols == cols) {  // a different type, same width
          std::vector<float> yo(n * 17), fo(n * 17, -1);
          MatMul(other.w, x.data(), n, yo.data(), &one);
          std::fill(fa.begin(), fa.end(), -1.f);
          const MatMulOutput mixed[] = {{&a.w, fa.data()}, {&other.w, fo.data()}};
          MatMulFused(mixed, x.data(), n, pool);
          EXPECT_EQ(std::memcmp(fa.data(), ya.data(), ya.size() * sizeof(float)), 0);
          EXPECT_EQ(std::memcmp(fo.data(), yo.data(), yo.size() * sizeof(float)), 0);
        }
      }
    }
  }
}

TEST(WeightMatrixTest, FromTensorChecksTypeAndShape) {
  std::vector<uint8_t> data(4096);
  GgufTensorInfo info;
  info.name = "blk.0.ffn_up.weight";
  info.type = FindGgmlType(static_cast<uint32_t>(GgmlType::kQ8_0));
  info.shape = {64, 3};
  info.data = data.data();
  auto w = WeightMatrix::FromTensor(info);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->rows, 3);
  EXPECT_EQ(w->cols, 64);
  EXPECT_EQ(w->row_bytes, 68);

  info.shape = {48, 3};  // not whole blocks
  EXPECT_FALSE(WeightMatrix::FromTensor(info).ok());
  info.shape = {64, 3, 2};
  EXPECT_FALSE(WeightMatrix::FromTensor(info).ok());
  info.shape = {64, 3};
  info.type = FindGgmlType(static_cast<uint32_t>(GgmlType::kQ5_K));
  EXPECT_FALSE(WeightMatrix::FromTensor(info).ok());
  EXPECT_FALSE(IsSupportedWeightType(GgmlType::kQ5_K));
  for (GgmlType t : kTypes) EXPECT_TRUE(IsSupportedWeightType(t));
}

TEST(DequantizeRowTest, MatchesQuantRef) {
  for (GgmlType type : kTypes) {
    const TestWeights tw = MakeWeights(type, 4, 512, 11);
    std::vector<float> row(512);
    DequantizeRow(tw.w, 2, row.data());
    EXPECT_EQ(std::memcmp(row.data(), tw.deq.data() + 2 * 512, 512 * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace sinkserve::engine
