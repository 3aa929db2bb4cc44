// Single kernels against host references: device dequantization against the
// scalar ggml reference (exact), and the sampling kernel against a host
// implementation of the same rules. Skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/model_weights.h"
#include "engine/gguf/quant_ref.h"
#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"
#include "kernels/device_context.h"
#include "kernels/device_sampler.h"
#include "kernels/ops.h"

namespace sinkserve::kernels {
namespace {

class DequantizeTest : public ::testing::TestWithParam<engine::GgmlType> {};

TEST_P(DequantizeTest, DeviceRowsEqualTheScalarReference) {
  SINKSERVE_SKIP_WITHOUT_GPU();
  engine::SyntheticLlamaSpec spec;
  spec.dim = 256;  // one k-quant super-block per row
  spec.n_heads = 4;
  spec.n_kv_heads = 2;
  spec.ffn_dim = 512;
  spec.vocab_size = 320;
  spec.weight_type = GetParam();
  spec.threads = 1;
  spec.seed = 7;
  const std::string path = ::testing::TempDir() + "/cuda_kernels_test_" +
                           std::to_string(static_cast<int>(GetParam())) + ".gguf";
  ASSERT_TRUE(engine::WriteSyntheticLlama(spec, path).ok());
  auto weights = engine::ModelWeights::Load(path);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const engine::WeightMatrix& w = (*weights)->layers()[0].w_gate;  // (512, 256)
  std::vector<float> want(w.rows * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    ASSERT_TRUE(engine::DequantizeRow(w.type->type, w.data + r * w.row_bytes, w.cols,
                                      &want[r * w.cols])
                    .ok());
  }
  auto ctx = DeviceContext::Create(0);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  DeviceBuffer raw, out;
  ASSERT_TRUE(raw.Reserve(w.rows * w.row_bytes).ok());
  ASSERT_TRUE(out.Reserve(want.size() * sizeof(float)).ok());
  ASSERT_EQ(cudaMemcpy(raw.get(), w.data, w.rows * w.row_bytes, cudaMemcpyHostToDevice),
            cudaSuccess);
  // Poisoned output: every element must be written.
  ASSERT_EQ(cudaMemset(out.get(), 0xff, want.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(LaunchDequantize(static_cast<uint32_t>(w.type->type), raw.get(), w.rows, w.cols,
                             w.row_bytes, DType::kF32, out.get(), (*ctx)->stream()),
            cudaSuccess);
  ASSERT_TRUE((*ctx)->Synchronize().ok());
  std::vector<float> got(want.size());
  ASSERT_EQ(cudaMemcpy(got.data(), out.get(), got.size() * sizeof(float),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], want[i]) << "element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, DequantizeTest,
                         ::testing::Values(engine::GgmlType::kF32, engine::GgmlType::kF16,
                                           engine::GgmlType::kBF16, engine::GgmlType::kQ8_0,
                                           engine::GgmlType::kQ4_0, engine::GgmlType::kQ4_K,
                                           engine::GgmlType::kQ6_K));

// The kernel's rules, on the host in double: kept = top-k by value (ties at
// the k-th value kept), then the smallest most-likely prefix reaching top_p
// of the kept mass; draw walks kept ids in order with tempered weights.
struct HostPick {
  int32_t token;
  double boundary_gap;  // distance of the draw from the nearest cumulative edge
};
HostPick HostSample(const std::vector<float>& x, const SampleParams& p) {
  const int n = static_cast<int>(x.size());
  const float mx = *std::max_element(x.begin(), x.end());
  if (p.temperature <= 0) {
    return {static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin()), 1.0};
  }
  std::vector<float> sorted(x);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  float cut = sorted.back();
  if (p.top_k > 0 && p.top_k < n) cut = sorted[p.top_k - 1];
  if (p.top_p < 1) {
    double kept = 0;
    for (float v : sorted) if (v >= cut) kept += std::exp(double{v} - mx);
    double mass = 0;
    for (float v : sorted) {
      if (v < cut) break;
      mass += std::exp(double{v} - mx);
      if (mass >= p.top_p * kept) {
        cut = v;
        break;
      }
    }
  }
  double total = 0;
  for (float v : x) if (v >= cut) total += std::exp((double{v} - mx) / p.temperature);
  double goal = p.uniform * total, edge = INFINITY;
  int32_t pick = -1;
  for (int i = 0; i < n && pick < 0; ++i) {
    if (x[i] < cut) continue;
    const double w = std::exp((double{x[i]} - mx) / p.temperature);
    edge = std::min({edge, std::fabs(goal), std::fabs(goal - w)});
    goal -= w;
    if (goal < 0) pick = i;
  }
  return {pick, edge / total};
}

TEST(SamplingKernelTest, MatchesHostRulesAndScoresSurprisal) {
  SINKSERVE_SKIP_WITHOUT_GPU();
  auto sampler = DeviceSampler::Create(0);
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  for (int vocab : {7, 320, 32000, 128256}) {
    const std::vector<SampleParams> settings = {
        {0.f, 0, 1.f, 0.5f, 3},   {1.f, 0, 1.f, 0.f, 0},  {0.8f, 40, 0.95f, 0.f, 1},
        {1.5f, 1, 1.f, 0.f, 2},   {1.f, 5, 1.f, 0.f, 4},  {0.7f, 0, 0.5f, 0.f, 5},
        {1.f, 200, 0.9f, 0.f, 6}, {2.f, 0, 1.f, 0.f, -1}};
    std::vector<float> logits;
    std::vector<SampleParams> params;
    for (SampleParams p : settings) {
      for (int i = 0; i < vocab; ++i) logits.push_back(normal(rng));
      if (p.uniform == 0.f) p.uniform = uniform(rng) * 0.999f;
      params.push_back(p);
    }
    auto results = (*sampler)->Sample(logits, vocab, params);
    ASSERT_TRUE(results.ok()) << results.status();
    for (size_t r = 0; r < params.size(); ++r) {
      std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
      double mx = *std::max_element(row.begin(), row.end()), z = 0;
      for (float v : row) z += std::exp(v - mx);
      const double log_z = mx + std::log(z);
      const SampleResult& got = (*results)[r];
      ASSERT_GE(got.token, 0);
      ASSERT_LT(got.token, vocab);
      EXPECT_NEAR(got.logprob, row[got.token] - log_z, 1e-4) << vocab << " row " << r;
      const int32_t target = params[r].target;
      if (target >= 0 && target < vocab) {
        EXPECT_NEAR(got.surprisal, log_z - row[target], 1e-4) << vocab << " row " << r;
      }
      const HostPick want = HostSample(row, params[r]);
      if (want.boundary_gap > 1e-4) {
        EXPECT_EQ(got.token, want.token) << "vocab " << vocab << " row " << r;
      }
    }
  }
  // Bad input is an error, not a crash.
  EXPECT_FALSE((*sampler)->Sample(std::vector<float>(5), 4, {{1.f, 0, 1.f, 0.f, 0}}).ok());
  EXPECT_FALSE((*sampler)->Sample(std::vector<float>(4), 4, {{1.f, 0, 1.f, 1.f, 0}}).ok());
}

TEST(CudaCheckTest, ErrorsBecomeStatuses) {
  // Needs no device: only the mapping of codes.
  EXPECT_TRUE(CudaStatus(cudaSuccess, "x").ok());
  EXPECT_TRUE(absl::IsResourceExhausted(CudaStatus(cudaErrorMemoryAllocation, "alloc")));
  EXPECT_TRUE(absl::IsUnavailable(CudaStatus(cudaErrorNoDevice, "count")));
  EXPECT_TRUE(absl::IsInternal(CudaStatus(cudaErrorLaunchFailure, "launch")));
  EXPECT_NE(CudaStatus(cudaErrorLaunchFailure, "launch").message().find("launch"),
            std::string::npos);
  EXPECT_TRUE(absl::IsResourceExhausted(CublasStatus(CUBLAS_STATUS_ALLOC_FAILED, "gemm")));
  EXPECT_TRUE(CublasStatus(CUBLAS_STATUS_SUCCESS, "gemm").ok());
}

}  // namespace
}  // namespace sinkserve::kernels
