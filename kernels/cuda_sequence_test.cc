// The CUDA backend under the engine's own drivers: cache policies through
// engine::Sequence, snapshots across backends, device picks, CUDA graphs.
// Same fixture and instantiations as cuda_backend_test.cc (one executable).
#include <thread>

#include "engine/sequence.h"
#include "kernels/cuda_backend.h"
#include "kernels/cuda_test_util.h"
#include "memory/cache_policy.h"

namespace sinkserve::kernels {
namespace {

using namespace ::sinkserve::kernels::cuda_testing;  // NOLINT: test fixture and helpers

TEST_P(CudaBackendTest, SnapshotsMoveBetweenCpuAndGpu) {
  engine::CpuBackendOptions cpu_options;
  cpu_options.threads = 2;
  cpu_options.kv_dtype = GetParam().kv;
  auto cpu = engine::NewCpuBackend(weights_, cpu_options);
  ASSERT_TRUE(cpu.ok());
  const std::vector<int32_t> tokens = Prompt(vocab_, 17);
  const auto head = absl::MakeConstSpan(tokens).subspan(0, 16);
  const std::vector<int32_t> slots = Range(0, 16);
  // GPU -> CPU.
  auto gpu_kv = NewKv(gpu_.get(), 32);
  Feed(gpu_.get(), gpu_kv.get(), 0, head, LogitsMode::kNone);
  std::string bytes;
  ASSERT_TRUE(gpu_kv->ExportSlots(slots, &bytes).ok());
  auto cpu_kv = NewKv(cpu->get(), 32);
  absl::Status imported = cpu_kv->ImportSlots(slots, bytes);
  ASSERT_TRUE(imported.ok()) << imported;
  const std::vector<float> on_gpu =
      Feed(gpu_.get(), gpu_kv.get(), 16, {&tokens[16], 1}, LogitsMode::kLast);
  const std::vector<float> on_cpu =
      Feed(cpu->get(), cpu_kv.get(), 16, {&tokens[16], 1}, LogitsMode::kLast);
  EXPECT_LT(MaxRelError(on_gpu, on_cpu), tolerance());
  // CPU -> GPU: the CPU's rows continue on the GPU.
  auto back = NewKv(gpu_.get(), 32);
  std::string cpu_bytes;
  ASSERT_TRUE(cpu_kv->ExportSlots(slots, &cpu_bytes).ok());
  ASSERT_TRUE(back->ImportSlots(slots, cpu_bytes).ok());
  std::string round_trip;
  ASSERT_TRUE(back->ExportSlots(slots, &round_trip).ok());
  EXPECT_EQ(round_trip, cpu_bytes);
  const std::vector<float> resumed =
      Feed(gpu_.get(), back.get(), 16, {&tokens[16], 1}, LogitsMode::kLast);
  EXPECT_LT(MaxRelError(resumed, on_cpu), tolerance());
}

// A checkpoint's rows are captured while the decoder goes on: what Wait
// returns must be the rows of the moment of capture, even after the slots
// were overwritten, and even after the storage itself is gone.
TEST_P(CudaBackendTest, AsyncExportKeepsTheRowsOfItsMoment) {
  const std::vector<int32_t> tokens = Prompt(vocab_, 24);
  auto kv = NewKv(gpu_.get(), 32);
  Feed(gpu_.get(), kv.get(), 0, absl::MakeConstSpan(tokens).subspan(0, 16), LogitsMode::kNone);
  const std::vector<int32_t> slots = {3, 0, 15, 7, 8};
  std::string want;
  ASSERT_TRUE(kv->ExportSlots(slots, &want).ok());
  auto pending = kv->ExportSlotsAsync(slots);
  ASSERT_TRUE(pending.ok()) << pending.status();
  // Overwrite those slots: a compaction and an import of other rows.
  ASSERT_TRUE(kv->MoveSlots({{10, 3}, {11, 0}}).ok());
  std::string other;
  ASSERT_TRUE(kv->ExportSlots({12, 13, 14}, &other).ok());
  ASSERT_TRUE(kv->ImportSlots({15, 7, 8}, other).ok());
  std::string now;
  ASSERT_TRUE(kv->ExportSlots(slots, &now).ok());
  ASSERT_NE(now, want) << "the test must change the rows it exported";
  kv.reset();  // the session left memory before its checkpoint was written
  std::string got;
  absl::Status waited = (*pending)->Wait(&got);
  ASSERT_TRUE(waited.ok()) << waited;
  EXPECT_EQ(got, want);
  // Many in flight at once, waited for from another thread in reverse order.
  auto kv2 = NewKv(gpu_.get(), 32);
  Feed(gpu_.get(), kv2.get(), 0, absl::MakeConstSpan(tokens).subspan(0, 20), LogitsMode::kNone);
  std::vector<std::unique_ptr<memory::PendingRows>> inflight;
  std::vector<std::string> expected;
  for (int i = 0; i < 8; ++i) {
    const std::vector<int32_t> one = {i, 19 - i};
    expected.emplace_back();
    ASSERT_TRUE(kv2->ExportSlots(one, &expected.back()).ok());
    auto p = kv2->ExportSlotsAsync(one);
    ASSERT_TRUE(p.ok()) << p.status();
    inflight.push_back(std::move(*p));
  }
  std::vector<std::string> results(inflight.size());
  std::vector<absl::Status> statuses(inflight.size());
  std::thread writer([&] {
    for (int i = static_cast<int>(inflight.size()) - 1; i >= 0; --i) {
      statuses[i] = inflight[i]->Wait(&results[i]);
    }
  });
  writer.join();
  for (size_t i = 0; i < inflight.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << statuses[i];
    EXPECT_EQ(results[i], expected[i]) << i;
  }
}

TEST_P(CudaBackendTest, DevicePicksAgreeWithHostLogits) {
  auto* cuda = dynamic_cast<CudaBackend*>(gpu_.get());
  ASSERT_NE(cuda, nullptr);
  const std::vector<int32_t> a = Prompt(vocab_, 9), b = Prompt(vocab_, 3);
  const std::vector<float> logits_a = Alone(gpu_.get(), a), logits_b = Alone(gpu_.get(), b);
  auto kv_a = NewKv(gpu_.get()), kv_b = NewKv(gpu_.get());
  const std::vector<int32_t> sa = Range(0, 9), sb = Range(0, 3);
  // a: greedy pick with the surprisal of token 5; b: plain logits.
  const std::vector<std::optional<SampleParams>> picks = {
      SampleParams{0.f, 0, 1.f, 0.f, 5}, std::nullopt};
  StepResult result;
  std::vector<SampleResult> samples;
  absl::Status status = cuda->ForwardAndSample(
      {{kv_a.get(), {}, {}, a, sa, sa, LogitsMode::kLast},
       {kv_b.get(), {}, {}, b, sb, sb, LogitsMode::kAll}},
      picks, &result, &samples);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_TRUE(result.logits[0].empty());
  const absl::Span<const float> last_a = Row(logits_a, 8);
  EXPECT_EQ(samples[0].token, Argmax(last_a));
  EXPECT_NEAR(samples[0].surprisal, engine::Surprisal(last_a, 5), 1e-3);
  EXPECT_EQ(samples[1].token, -1);
  EXPECT_LT(MaxRelError(result.logits[1], logits_b), 1e-5);
  // A pick needs logits; a draw must lie in [0, 1).
  auto kv_c = NewKv(gpu_.get());
  EXPECT_FALSE(cuda->ForwardAndSample({{kv_c.get(), {}, {}, b, sb, sb, LogitsMode::kNone}},
                                      {SampleParams{0.f, 0, 1.f, 0.f, -1}}, &result, &samples)
                   .ok());
  EXPECT_FALSE(cuda->ForwardAndSample({{kv_c.get(), {}, {}, b, sb, sb, LogitsMode::kLast}},
                                      {SampleParams{1.f, 0, 1.f, 1.f, -1}}, &result, &samples)
                   .ok());
}

TEST_P(CudaBackendTest, GraphReplayEqualsEagerSteps) {
  CudaBackendOptions options;
  options.weight_dtype = GetParam().weights;
  options.kv_dtype = GetParam().kv;
  options.cuda_graphs = true;
  auto graphed_or = NewCudaBackend(weights_, options);
  ASSERT_TRUE(graphed_or.ok()) << graphed_or.status();
  Backend* graphed = graphed_or->get();
  // Steady decode as a full StreamingLLM cache runs it: 20 cells, each new
  // token written to slot 20 at position 20. Interleaved: a two-sequence
  // batch (another shape), then the steady shape again.
  const std::vector<int32_t> prompt = Prompt(vocab_, 26);
  auto kv_e = NewKv(gpu_.get(), 32), kv_g = NewKv(graphed, 32);
  auto other_e = NewKv(gpu_.get(), 32), other_g = NewKv(graphed, 32);
  const auto head = absl::MakeConstSpan(prompt).subspan(0, 20);
  Feed(gpu_.get(), kv_e.get(), 0, head, LogitsMode::kNone);
  Feed(graphed, kv_g.get(), 0, head, LogitsMode::kNone);
  const std::vector<int32_t> ctx = Range(0, 20);
  const int32_t slot[1] = {20};
  for (int step = 0; step < 6; ++step) {
    const int32_t token[1] = {prompt[20 + step]};
    StepResult e, g;
    if (step == 3) {
      const int32_t zero[1] = {0};
      ASSERT_TRUE(gpu_->Forward({{kv_e.get(), ctx, ctx, token, slot, slot},
                                 {other_e.get(), {}, {}, token, zero, zero}},
                                &e)
                      .ok());
      ASSERT_TRUE(graphed->Forward({{kv_g.get(), ctx, ctx, token, slot, slot},
                                    {other_g.get(), {}, {}, token, zero, zero}},
                                   &g)
                      .ok());
      EXPECT_LT(MaxRelError(g.logits[1], e.logits[1]), 1e-6);
    } else {
      ASSERT_TRUE(gpu_->Forward({{kv_e.get(), ctx, ctx, token, slot, slot}}, &e).ok());
      ASSERT_TRUE(graphed->Forward({{kv_g.get(), ctx, ctx, token, slot, slot}}, &g).ok());
    }
    EXPECT_LT(MaxRelError(g.logits[0], e.logits[0]), 1e-6) << "step " << step;
  }
  // Step 1 repeats step 0's shape and is captured; step 2 replays it. (Step
  // 3's bigger batch may grow a scratch buffer, which makes later steps a new
  // key: more replays are possible, not promised.)
  EXPECT_GE(dynamic_cast<CudaBackend*>(graphed)->graph_replays(), 1);
}

TEST_P(CudaBackendTest, EveryPolicyGeneratesTheCpuTokens) {
  // The real cache policies drive both backends (eviction, SirLLM scores and
  // compaction through MoveSlots) for 120 greedy tokens past a small budget.
  for (const char* spec : {"full", "window:window=24", "streaming:sinks=4,window=20",
                           "sirllm:sinks=4,entropy=8,window=12,decay=0.9",
                           "recompute:window=24"}) {
    SCOPED_TRACE(spec);
    auto policy = memory::PolicyConfig::Parse(spec);
    ASSERT_TRUE(policy.ok()) << policy.status();
    engine::SequenceOptions options;
    options.policy = *policy;
    options.max_step_tokens = 16;
    if (policy->kind == memory::PolicyKind::kFull) options.capacity = 160;
    auto cpu_seq = engine::Sequence::Create(cpu_.get(), options);
    auto gpu_seq = engine::Sequence::Create(gpu_.get(), options);
    ASSERT_TRUE(cpu_seq.ok()) << cpu_seq.status();
    ASSERT_TRUE(gpu_seq.ok()) << gpu_seq.status();
    const std::vector<int32_t> prompt = Prompt(vocab_, 20);
    ASSERT_TRUE((*cpu_seq)->Feed(prompt).ok());
    ASSERT_TRUE((*gpu_seq)->Feed(prompt).ok());
    double worst = 0;
    for (int step = 0; step < 120; ++step) {
      const std::vector<float> c((*cpu_seq)->last_logits().begin(),
                                 (*cpu_seq)->last_logits().end());
      const std::vector<float> g((*gpu_seq)->last_logits().begin(),
                                 (*gpu_seq)->last_logits().end());
      worst = std::max(worst, MaxRelError(g, c));
      const int32_t token = Argmax(c);
      if (Argmax(g) != token) {
        ASSERT_LT(TopMargin(c), 10 * tolerance() * std::fabs(c[token])) << "step " << step;
        break;  // a near-tie flipped by rounding; nothing further to compare
      }
      (*cpu_seq)->AddPending(token, c);
      (*gpu_seq)->AddPending(token, g);
      absl::Status cs = (*cpu_seq)->Feed({}), gs = (*gpu_seq)->Feed({});
      ASSERT_TRUE(cs.ok()) << cs;
      ASSERT_TRUE(gs.ok()) << gs;
      ASSERT_EQ((*gpu_seq)->cache().size(), (*cpu_seq)->cache().size());
    }
    EXPECT_LT(worst, tolerance());
  }
}

}  // namespace
}  // namespace sinkserve::kernels
