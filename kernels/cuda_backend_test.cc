// Parity of the CUDA backend with the CPU reference, step by step. Every test
// skips where no CUDA device is usable, so CI (no GPU) stays green;
// scripts/gpu_suite runs them on the device machine.
#include "kernels/cuda_backend.h"

#include "kernels/cuda_test_util.h"
#include "kernels/step_plan.h"

namespace sinkserve::kernels {
namespace {

using namespace ::sinkserve::kernels::cuda_testing;  // NOLINT: test fixture and helpers

TEST_P(CudaBackendTest, PrefillLogitsMatchCpu) {
  const std::vector<int32_t> prompt = Prompt(vocab_);
  const std::vector<float> cpu = Alone(cpu_.get(), prompt);
  const std::vector<float> gpu = Alone(gpu_.get(), prompt);
  EXPECT_LT(MaxRelError(gpu, cpu), tolerance());
}

TEST_P(CudaBackendTest, ChunkedPrefillAndDecodeMatchCpu) {
  // Chunks of 13 (tiled kernel, partial tiles), 3 (decode kernel over a
  // chunk), then single tokens.
  const std::vector<int32_t> prompt = Prompt(vocab_, 24);
  const std::vector<float> cpu = Alone(cpu_.get(), prompt);
  auto kv = NewKv(gpu_.get());
  std::vector<float> rows;
  for (auto [begin, n] : std::vector<std::pair<int, int>>{{0, 13}, {13, 3}, {16, 1}, {17, 7}}) {
    std::vector<float> part =
        Feed(gpu_.get(), kv.get(), begin, absl::MakeConstSpan(prompt).subspan(begin, n));
    rows.insert(rows.end(), part.begin(), part.end());
  }
  EXPECT_LT(MaxRelError(rows, cpu), tolerance());
}

TEST_P(CudaBackendTest, GreedyTokensMatchCpuFor200Steps) {
  auto cpu_kv = NewKv(cpu_.get(), 256), gpu_kv = NewKv(gpu_.get(), 256);
  const std::vector<int32_t> prompt = {1};
  int32_t cpu_next = Argmax(Feed(cpu_.get(), cpu_kv.get(), 0, prompt, LogitsMode::kLast));
  int32_t gpu_next = Argmax(Feed(gpu_.get(), gpu_kv.get(), 0, prompt, LogitsMode::kLast));
  double worst = 0;
  for (int step = 1; step <= 200; ++step) {
    ASSERT_EQ(gpu_next, cpu_next) << "step " << step;
    const int32_t token[1] = {cpu_next};
    const std::vector<float> c = Feed(cpu_.get(), cpu_kv.get(), step, token, LogitsMode::kLast);
    const std::vector<float> g = Feed(gpu_.get(), gpu_kv.get(), step, token, LogitsMode::kLast);
    worst = std::max(worst, MaxRelError(g, c));
    cpu_next = Argmax(c);
    gpu_next = Argmax(g);
    // A near-tie may flip under rounding without either backend being
    // wrong; the logits are still compared, the run just stops there.
    if (gpu_next != cpu_next && TopMargin(c) < 10 * tolerance() * std::fabs(c[cpu_next])) {
      GTEST_LOG_(INFO) << "near-tie at step " << step << "; stopping";
      break;
    }
  }
  EXPECT_LT(worst, tolerance());
}

TEST_P(CudaBackendTest, MixedBatchEqualsEachAlone) {
  // A: fresh prefill of 11 (tiled). B: 20 cached, decodes 1. C: 3 cached,
  // chunk of 3 (decode kernel). D: 5 cached, chunk of 9 (tiled over cache).
  const std::vector<int32_t> a = Prompt(vocab_, 11), b = Prompt(vocab_, 21),
                             c = Prompt(vocab_, 6), d = Prompt(vocab_, 14);
  auto kv_a = NewKv(gpu_.get()), kv_b = NewKv(gpu_.get()), kv_c = NewKv(gpu_.get()),
       kv_d = NewKv(gpu_.get());
  Feed(gpu_.get(), kv_b.get(), 0, absl::MakeConstSpan(b).subspan(0, 20), LogitsMode::kNone);
  Feed(gpu_.get(), kv_c.get(), 0, absl::MakeConstSpan(c).subspan(0, 3), LogitsMode::kNone);
  Feed(gpu_.get(), kv_d.get(), 0, absl::MakeConstSpan(d).subspan(0, 5), LogitsMode::kNone);
  const std::vector<int32_t> ctx = Range(0, 20);
  const std::vector<int32_t> sa = Range(0, 11), sb = {20}, sc = Range(3, 6), sd = Range(5, 14);
  auto ctx_n = [&](int n) { return absl::MakeConstSpan(ctx).subspan(0, n); };
  std::vector<SequenceStep> batch = {
      {kv_a.get(), {}, {}, a, sa, sa, LogitsMode::kAll},
      {kv_b.get(), ctx_n(20), ctx_n(20), absl::MakeConstSpan(b).subspan(20), sb, sb,
       LogitsMode::kLast},
      {kv_c.get(), ctx_n(3), ctx_n(3), absl::MakeConstSpan(c).subspan(3), sc, sc,
       LogitsMode::kAll},
      {kv_d.get(), ctx_n(5), ctx_n(5), absl::MakeConstSpan(d).subspan(5), sd, sd,
       LogitsMode::kAll}};
  StepResult result;
  absl::Status status = gpu_->Forward(batch, &result);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(result.logits.size(), 4u);
  // Alone on the GPU: batching changes GEMM shapes only, so rounding only.
  const double same = GetParam().weights == KvDtype::kF32 ? 1e-5 : tolerance() / 4;
  EXPECT_LT(MaxRelError(result.logits[0], Alone(gpu_.get(), a)), same);
  EXPECT_LT(MaxRelError(result.logits[1], Row(Alone(gpu_.get(), b), 20)), same);
  const std::vector<float> alone_c = Alone(gpu_.get(), c), alone_d = Alone(gpu_.get(), d);
  EXPECT_LT(MaxRelError(result.logits[2], absl::MakeConstSpan(alone_c).subspan(3 * vocab_)),
            same);
  EXPECT_LT(MaxRelError(result.logits[3], absl::MakeConstSpan(alone_d).subspan(5 * vocab_)),
            same);
  // And against the CPU.
  EXPECT_LT(MaxRelError(result.logits[0], Alone(cpu_.get(), a)), tolerance());
}

TEST_P(CudaBackendTest, ScatteredSlotsShuffledContextAndShiftedPositions) {
  const std::vector<int32_t> tokens = Prompt(vocab_, 12);
  const std::vector<float> reference = Alone(cpu_.get(), tokens);
  auto kv = NewKv(gpu_.get(), 32);
  const std::vector<int32_t> slots = {30, 2, 17, 9, 0, 25, 4, 12, 21, 7, 14};
  const std::vector<int32_t> positions = Range(1000, 1011);  // only differences matter
  SequenceStep prefill{kv.get(), {}, {}, absl::MakeConstSpan(tokens).subspan(0, 11),
                       slots, positions, LogitsMode::kAll};
  StepResult result;
  ASSERT_TRUE(gpu_->Forward({prefill}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0],
                        absl::MakeConstSpan(reference).subspan(0, 11 * vocab_)),
            10 * tolerance());
  const std::vector<int32_t> order = {5, 0, 10, 3, 8, 1, 6, 9, 2, 7, 4};
  std::vector<int32_t> ctx_slots, ctx_positions;
  for (int32_t i : order) {
    ctx_slots.push_back(slots[i]);
    ctx_positions.push_back(positions[i]);
  }
  const int32_t slot[1] = {31}, position[1] = {1011};
  SequenceStep decode{kv.get(), ctx_slots, ctx_positions, {&tokens[11], 1}, slot, position,
                      LogitsMode::kLast};
  ASSERT_TRUE(gpu_->Forward({decode}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0], Row(reference, 11)), 10 * tolerance());
}

TEST_P(CudaBackendTest, SirLlmCompactionWithMoveSlotsMatchesCpu) {
  // SirLLM-style: of 30 cells keep 4 sinks, 4 scattered high-score cells and
  // the last 6, compact them to slots 0..13 in order (positions renumbered),
  // then decode on both backends. (18 -> 7) writes a slot an earlier pair read.
  const std::vector<int32_t> tokens = Prompt(vocab_, 31);
  auto cpu_kv = NewKv(cpu_.get(), 32), gpu_kv = NewKv(gpu_.get(), 32);
  const auto head = absl::MakeConstSpan(tokens).subspan(0, 30);
  Feed(cpu_.get(), cpu_kv.get(), 0, head, LogitsMode::kNone);
  Feed(gpu_.get(), gpu_kv.get(), 0, head, LogitsMode::kNone);
  std::vector<std::pair<int32_t, int32_t>> moves;
  const std::vector<int32_t> kept_cells = {7, 11, 12, 18, 24, 25, 26, 27, 28, 29};
  for (int32_t i = 0; i < 10; ++i) moves.emplace_back(kept_cells[i], 4 + i);
  ASSERT_TRUE(cpu_kv->MoveSlots(moves).ok());
  ASSERT_TRUE(gpu_kv->MoveSlots(moves).ok());
  const std::vector<int32_t> kept = Range(0, 14);
  const int32_t slot[1] = {14}, position[1] = {14};
  StepResult c, g;
  ASSERT_TRUE(cpu_->Forward({{cpu_kv.get(), kept, kept, {&tokens[30], 1}, slot, position}}, &c)
                  .ok());
  ASSERT_TRUE(gpu_->Forward({{gpu_kv.get(), kept, kept, {&tokens[30], 1}, slot, position}}, &g)
                  .ok());
  EXPECT_LT(MaxRelError(g.logits[0], c.logits[0]), tolerance());
}

TEST_P(CudaBackendTest, MoveSlotsKeepsInOrderMeaning) {
  // A chain (1->0, 2->1, 3->2) reads slots later pairs write; a repeated
  // destination keeps the last write. Checked on exported bytes.
  auto kv = NewKv(gpu_.get(), 8);
  Feed(gpu_.get(), kv.get(), 0, Prompt(vocab_, 6), LogitsMode::kNone);
  const std::vector<int32_t> all = Range(0, 8);
  std::string before, after;
  ASSERT_TRUE(kv->ExportSlots(all, &before).ok());
  ASSERT_TRUE(kv->MoveSlots({{1, 0}, {2, 1}, {3, 2}, {5, 7}, {4, 7}}).ok());
  ASSERT_TRUE(kv->ExportSlots(all, &after).ok());
  // Expected: slot s of `after` holds slot src[s] of `before`.
  const std::vector<int32_t> src = {1, 2, 3, 3, 4, 5, 6, 4};
  const size_t row = before.size() / (2 * weights_->config().n_layers * 8);
  for (int64_t lk = 0; lk < 2 * weights_->config().n_layers; ++lk) {
    for (int32_t s = 0; s < 8; ++s) {
      EXPECT_EQ(after.substr((lk * 8 + s) * row, row), before.substr((lk * 8 + src[s]) * row, row))
          << "slot " << s;
    }
  }
  EXPECT_FALSE(kv->MoveSlots({{0, 8}}).ok());
  EXPECT_FALSE(kv->ImportSlots({0}, before).ok());
  EXPECT_FALSE(kv->ExportSlots({-1}, &after).ok());
}

TEST_P(CudaBackendTest, BadStepsAreErrorsNotCrashes) {
  auto kv = NewKv(gpu_.get(), 8);
  auto cpu_kv = NewKv(cpu_.get(), 8);
  StepResult result;
  const int32_t ok_token[1] = {5}, bad_token[1] = {static_cast<int32_t>(vocab_)};
  const int32_t slot0[1] = {0}, slot_far[1] = {8}, negative[1] = {-1};
  const std::vector<int32_t> two = {0, 1};
  EXPECT_FALSE(gpu_->Forward({{kv.get(), {}, {}, bad_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{kv.get(), {}, {}, ok_token, slot_far, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{kv.get(), {}, {}, ok_token, slot0, negative}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{kv.get(), {}, {}, ok_token, two, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{kv.get(), slot0, slot0, ok_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{cpu_kv.get(), {}, {}, ok_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->Forward({{nullptr, {}, {}, ok_token, slot0, slot0}}, &result).ok());
  EXPECT_TRUE(gpu_->Forward({{kv.get(), {}, {}, ok_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(gpu_->NewKvStorage(0).ok());
  EXPECT_FALSE(gpu_->Forward({}, nullptr).ok());
}

INSTANTIATE_TEST_SUITE_P(Models, CudaBackendTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

TEST(StepPlanTest, PrefillKernelFollowsKvTypeAndHeadSize) {
  // Host-side choice, no device needed: which Cases() take the tensor-core
  // prefill kernel (f16 / bf16 KV, head 16/32/64/128) and its 64-row tiles.
  engine::ModelConfig c;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;  // the synthetic llama / qwen2 shapes
  c.vocab_size = 320;
  EXPECT_TRUE(StepPlan(c, DType::kF16, true).flash_prefill());
  EXPECT_TRUE(StepPlan(c, DType::kBF16, true).flash_prefill());
  EXPECT_EQ(StepPlan(c, DType::kF16, true).tile_rows(), kFlashTileRows);
  EXPECT_FALSE(StepPlan(c, DType::kF32, true).flash_prefill());
  EXPECT_EQ(StepPlan(c, DType::kF32, true).tile_rows(), kPrefillTileRows);
  EXPECT_FALSE(StepPlan(c, DType::kF16, false).flash_prefill());  // option off
  c.head_dim = 8;  // stories260K
  EXPECT_FALSE(StepPlan(c, DType::kF16, true).flash_prefill());
  c.head_dim = 128;
  EXPECT_TRUE(StepPlan(c, DType::kBF16, true).flash_prefill());
}

TEST(CudaBackendStandaloneTest, NoDeviceIsUnavailableNotACrash) {
  if (CudaAvailable()) GTEST_SKIP() << "a device is present";
  engine::SyntheticLlamaSpec spec;
  spec.threads = 1;
  const std::string path = ::testing::TempDir() + "/cuda_backend_test_nodevice.gguf";
  ASSERT_TRUE(engine::WriteSyntheticLlama(spec, path).ok());
  auto weights = engine::ModelWeights::Load(path);
  ASSERT_TRUE(weights.ok());
  auto backend = NewCudaBackend(*weights, {});
  ASSERT_FALSE(backend.ok());
  EXPECT_TRUE(absl::IsUnavailable(backend.status())) << backend.status();
}

}  // namespace
}  // namespace sinkserve::kernels
