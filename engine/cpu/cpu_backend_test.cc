#include "engine/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend_test_util.h"
#include "engine/cpu/cpu_kv_storage.h"
#include "engine/generator.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/model_weights.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

// Model files are written once per test binary into the test temp dir.
std::string SyntheticModel(const std::string& name, SyntheticLlamaSpec spec) {
  const std::string path = ::testing::TempDir() + "/cpu_backend_test_" + name + ".gguf";
  absl::Status status = WriteSyntheticLlama(spec, path);
  EXPECT_TRUE(status.ok()) << status;
  return path;
}

struct ModelCase {
  std::string name;
  SyntheticLlamaSpec spec;
};

std::vector<ModelCase> Cases() {
  SyntheticLlamaSpec llama;  // GQA 4/2, untied, adjacent RoPE
  llama.vocab_size = 320;
  llama.threads = 1;
  SyntheticLlamaSpec qwen = llama;  // NeoX RoPE, q/k/v biases, tied
  qwen.arch = "qwen2";
  qwen.tied_output = true;
  qwen.rope_freq_base = 1e6f;
  qwen.rope_scale = 2.f;
  return {{"llama", llama}, {"qwen2", qwen}};
}

class CpuBackendTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    auto weights = ModelWeights::Load(SyntheticModel(GetParam().name, GetParam().spec));
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = *weights;
    auto backend = NewCpuBackend(weights_, {2});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    vocab_ = backend_->config().vocab_size;
  }

  std::unique_ptr<KvStorage> NewKv(int capacity = 64) {
    auto kv = backend_->NewKvStorage(capacity);
    EXPECT_TRUE(kv.ok()) << kv.status();
    return std::move(*kv);
  }

  // Feeds `tokens` after `n_cached` in-order cells (slot = position = index).
  std::vector<float> FeedInOrder(KvStorage* kv, int n_cached, absl::Span<const int32_t> tokens,
                                 LogitsMode mode = LogitsMode::kAll) {
    const std::vector<int32_t> ctx = Range(0, n_cached);
    const std::vector<int32_t> slots = Range(n_cached, n_cached + tokens.size());
    SequenceStep step{kv, ctx, ctx, tokens, slots, slots, mode};
    StepResult result;
    absl::Status status = backend_->Forward({step}, &result);
    EXPECT_TRUE(status.ok()) << status;
    return result.logits.empty() ? std::vector<float>() : result.logits[0];
  }

  // Logits of every position of `tokens` fed at once into a fresh cache.
  std::vector<float> Alone(absl::Span<const int32_t> tokens) {
    auto kv = NewKv();
    return FeedInOrder(kv.get(), 0, tokens);
  }

  absl::Span<const float> Row(const std::vector<float>& logits, int64_t row) {
    return absl::MakeConstSpan(logits).subspan(row * vocab_, vocab_);
  }

  std::shared_ptr<const ModelWeights> weights_;
  std::unique_ptr<Backend> backend_;
  int64_t vocab_ = 0;
};

const std::vector<int32_t> kTokens = {1, 17, 203, 5, 99, 42, 311, 8, 64, 150, 7, 260};

TEST_P(CpuBackendTest, PrefillChunksEqualWholeEqualTokenByToken) {
  const std::vector<float> whole = Alone(kTokens);
  ASSERT_EQ(whole.size(), kTokens.size() * vocab_);

  auto chunked = NewKv();
  std::vector<float> rows;
  for (int begin = 0; begin < 12; begin += 5) {
    const int n = std::min<int>(5, kTokens.size() - begin);
    std::vector<float> part =
        FeedInOrder(chunked.get(), begin, absl::MakeConstSpan(kTokens).subspan(begin, n));
    rows.insert(rows.end(), part.begin(), part.end());
  }
  EXPECT_LT(MaxRelError(rows, whole), 1e-5);

  auto single = NewKv();
  for (size_t i = 0; i < kTokens.size(); ++i) {
    std::vector<float> row = FeedInOrder(single.get(), i, {&kTokens[i], 1}, LogitsMode::kLast);
    EXPECT_LT(MaxRelError(row, Row(whole, i)), 1e-5) << "token " << i;
  }
}

TEST_P(CpuBackendTest, LogitsModesSelectRows) {
  const std::vector<float> all = Alone(kTokens);
  auto kv = NewKv();
  EXPECT_TRUE(FeedInOrder(kv.get(), 0, kTokens, LogitsMode::kNone).empty());
  auto kv2 = NewKv();
  std::vector<float> last = FeedInOrder(kv2.get(), 0, kTokens, LogitsMode::kLast);
  EXPECT_LT(MaxRelError(last, Row(all, kTokens.size() - 1)), 1e-6);
}

TEST_P(CpuBackendTest, MixedBatchEqualsEachAlone) {
  // A: fresh prefill of 7. B: 5 cached, decodes 1. C: 3 cached, chunk of 4.
  const std::vector<int32_t> a = {1, 10, 20, 30, 40, 50, 60};
  const std::vector<int32_t> b = {1, 11, 21, 31, 41, 51};
  const std::vector<int32_t> c = {1, 12, 22, 32, 42, 52, 62};
  auto kv_a = NewKv(), kv_b = NewKv(), kv_c = NewKv();
  FeedInOrder(kv_b.get(), 0, absl::MakeConstSpan(b).subspan(0, 5), LogitsMode::kNone);
  FeedInOrder(kv_c.get(), 0, absl::MakeConstSpan(c).subspan(0, 3), LogitsMode::kNone);

  const std::vector<int32_t> ctx = Range(0, 5);
  const std::vector<int32_t> slots_a = Range(0, 7), slot_b = {5}, slots_c = Range(3, 7);
  std::vector<SequenceStep> batch = {
      {kv_a.get(), {}, {}, a, slots_a, slots_a, LogitsMode::kAll},
      {kv_b.get(), ctx, ctx, absl::MakeConstSpan(b).subspan(5), slot_b, slot_b,
       LogitsMode::kLast},
      {kv_c.get(), absl::MakeConstSpan(ctx).subspan(0, 3), absl::MakeConstSpan(ctx).subspan(0, 3),
       absl::MakeConstSpan(c).subspan(3), slots_c, slots_c, LogitsMode::kAll}};
  StepResult result;
  ASSERT_TRUE(backend_->Forward(batch, &result).ok());
  ASSERT_EQ(result.logits.size(), 3u);

  EXPECT_LT(MaxRelError(result.logits[0], Alone(a)), 1e-5);
  const std::vector<float> alone_b = Alone(b);
  EXPECT_LT(MaxRelError(result.logits[1], Row(alone_b, 5)), 1e-5);
  const std::vector<float> alone_c = Alone(c);
  EXPECT_LT(MaxRelError(result.logits[2],
                     absl::MakeConstSpan(alone_c).subspan(3 * vocab_, 4 * vocab_)),
            1e-5);
}

TEST_P(CpuBackendTest, PositionsComeFromTheStepNotTheSlots) {
  const std::vector<float> reference = Alone(kTokens);
  // Prefill 11 tokens into scattered slots, then decode the 12th with the
  // context listed in a shuffled order: same cells, same positions.
  auto kv = NewKv(32);
  const std::vector<int32_t> slots = {30, 2, 17, 9, 0, 25, 4, 12, 21, 7, 14};
  const std::vector<int32_t> positions = Range(0, 11);
  SequenceStep prefill{kv.get(), {}, {}, absl::MakeConstSpan(kTokens).subspan(0, 11),
                       slots, positions, LogitsMode::kAll};
  StepResult result;
  ASSERT_TRUE(backend_->Forward({prefill}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0],
                     absl::MakeConstSpan(reference).subspan(0, 11 * vocab_)),
            1e-5);

  std::vector<int32_t> order = {5, 0, 10, 3, 8, 1, 6, 9, 2, 7, 4};
  std::vector<int32_t> ctx_slots, ctx_positions;
  for (int32_t i : order) {
    ctx_slots.push_back(slots[i]);
    ctx_positions.push_back(positions[i]);
  }
  const int32_t slot[1] = {31}, position[1] = {11};
  SequenceStep decode{kv.get(), ctx_slots, ctx_positions, {&kTokens[11], 1}, slot, position,
                      LogitsMode::kLast};
  ASSERT_TRUE(backend_->Forward({decode}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0], Row(reference, 11)), 1e-5);
}

TEST_P(CpuBackendTest, OnlyRelativePositionsMatter) {
  // RoPE attention depends on position differences: shifting every position
  // by 1000 changes the logits by rounding only.
  const std::vector<float> reference = Alone(kTokens);
  auto kv = NewKv();
  const std::vector<int32_t> slots = Range(0, kTokens.size());
  const std::vector<int32_t> shifted = Range(1000, 1000 + kTokens.size());
  SequenceStep step{kv.get(), {}, {}, kTokens, slots, shifted, LogitsMode::kAll};
  StepResult result;
  ASSERT_TRUE(backend_->Forward({step}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0], reference), 1e-4);
}

TEST_P(CpuBackendTest, MoveExportImportRoundTrip) {
  const std::vector<float> reference = Alone(kTokens);
  auto kv = NewKv(32);
  FeedInOrder(kv.get(), 0, absl::MakeConstSpan(kTokens).subspan(0, 11), LogitsMode::kNone);

  // Move cells 0..10 to slots 20..30 (no pair reads a slot an earlier one wrote).
  std::vector<std::pair<int32_t, int32_t>> moves;
  for (int32_t i = 0; i < 11; ++i) moves.emplace_back(i, 20 + i);
  ASSERT_TRUE(kv->MoveSlots(moves).ok());
  const std::vector<int32_t> moved = Range(20, 31), positions = Range(0, 11);
  const int32_t slot[1] = {0}, position[1] = {11};
  SequenceStep decode{kv.get(), moved, positions, {&kTokens[11], 1}, slot, position,
                      LogitsMode::kLast};
  StepResult result;
  ASSERT_TRUE(backend_->Forward({decode}, &result).ok());
  EXPECT_LT(MaxRelError(result.logits[0], Row(reference, 11)), 1e-5);

  // Export the moved cells, import them into another storage at 0..10.
  std::string bytes;
  ASSERT_TRUE(kv->ExportSlots(moved, &bytes).ok());
  EXPECT_EQ(bytes.size(), static_cast<size_t>(weights_->config().n_layers) * 2 * 11 *
                              weights_->config().n_kv_heads * weights_->config().head_dim *
                              sizeof(float));
  auto other = NewKv(16);
  const std::vector<int32_t> front = Range(0, 11);
  ASSERT_TRUE(other->ImportSlots(front, bytes).ok());
  std::string again;
  ASSERT_TRUE(other->ExportSlots(front, &again).ok());
  EXPECT_EQ(again, bytes);
  std::vector<float> row = FeedInOrder(other.get(), 11, {&kTokens[11], 1}, LogitsMode::kLast);
  EXPECT_LT(MaxRelError(row, Row(reference, 11)), 1e-5);

  EXPECT_FALSE(other->ImportSlots(front, bytes.substr(1)).ok());
  EXPECT_FALSE(other->ImportSlots({16}, bytes).ok());
  EXPECT_FALSE(other->ExportSlots({-1}, &again).ok());
  EXPECT_FALSE(other->MoveSlots({{0, 99}}).ok());
}

TEST_P(CpuBackendTest, BadStepsAreErrorsNotCrashes) {
  auto kv = NewKv(8);
  auto kv2 = NewKv(8);
  StepResult result;
  const int32_t ok_token[1] = {5}, bad_token[1] = {static_cast<int32_t>(vocab_)};
  const int32_t slot0[1] = {0}, slot_far[1] = {8}, negative[1] = {-1};
  const std::vector<int32_t> two = {0, 1};
  // Token outside the vocab; slot outside the storage; negative position.
  EXPECT_FALSE(backend_->Forward({{kv.get(), {}, {}, bad_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(backend_->Forward({{kv.get(), {}, {}, ok_token, slot_far, slot0}}, &result).ok());
  EXPECT_FALSE(backend_->Forward({{kv.get(), {}, {}, ok_token, slot0, negative}}, &result).ok());
  // Mismatched span lengths; context slot reused by a new token; no storage.
  EXPECT_FALSE(backend_->Forward({{kv.get(), {}, {}, ok_token, two, slot0}}, &result).ok());
  EXPECT_FALSE(backend_->Forward({{kv.get(), slot0, slot0, ok_token, slot0, slot0}}, &result).ok());
  EXPECT_FALSE(backend_->Forward({{nullptr, {}, {}, ok_token, slot0, slot0}}, &result).ok());
  // One storage twice in a batch.
  EXPECT_FALSE(backend_
                   ->Forward({{kv.get(), {}, {}, ok_token, slot0, slot0},
                              {kv.get(), {}, {}, ok_token, two, two}},
                             &result)
                   .ok());
  // Still works afterwards.
  EXPECT_TRUE(backend_
                  ->Forward({{kv.get(), {}, {}, ok_token, slot0, slot0},
                             {kv2.get(), {}, {}, ok_token, slot0, slot0}},
                            &result)
                  .ok());
  EXPECT_FALSE(backend_->NewKvStorage(0).ok());
}

TEST_P(CpuBackendTest, ThreadCountDoesNotChangeLogits) {
  auto one = NewCpuBackend(weights_, {1});
  ASSERT_TRUE(one.ok());
  auto kv = (*one)->NewKvStorage(16);
  ASSERT_TRUE(kv.ok());
  const std::vector<int32_t> slots = Range(0, kTokens.size());
  StepResult result;
  ASSERT_TRUE((*one)->Forward({{kv->get(), {}, {}, kTokens, slots, slots, LogitsMode::kAll}},
                              &result)
                  .ok());
  EXPECT_LT(MaxRelError(result.logits[0], Alone(kTokens)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Models, CpuBackendTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

TEST(InOrderCacheTest, PlansAppendsAfterCachedCells) {
  InOrderCache cache(8);
  SequenceStep step;
  cache.Plan(3, &step);
  EXPECT_TRUE(step.context_slots.empty());
  EXPECT_EQ(std::vector<int32_t>(step.token_slots.begin(), step.token_slots.end()),
            Range(0, 3));
  cache.Commit(3);
  cache.Plan(2, &step);
  EXPECT_EQ(std::vector<int32_t>(step.context_positions.begin(), step.context_positions.end()),
            Range(0, 3));
  EXPECT_EQ(std::vector<int32_t>(step.token_positions.begin(), step.token_positions.end()),
            Range(3, 5));
  cache.Commit(2);
  EXPECT_EQ(cache.free(), 3);
}

// The real model: greedy generation is deterministic and ends its story with
// BOS, which the generator treats as end of text.
TEST(GeneratorTest, Stories260KGreedyStopsAtEndOfText) {
  const char* shared = std::getenv("SINKSERVE_SHARED");
  if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
  auto weights = ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto tokenizer = Tokenizer::FromGguf((*weights)->file());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto backend = NewCpuBackend(*weights, {2});
  ASSERT_TRUE(backend.ok());
  auto generator = Generator::Create(backend->get(), tokenizer->get(), 512);
  ASSERT_TRUE(generator.ok());

  SamplerOptions greedy;
  greedy.temperature = 0;
  GeneratorOptions options;
  options.max_tokens = 500;
  options.prefill_chunk = 1;
  std::string text;
  std::vector<int32_t> ids;
  GeneratorCallbacks callbacks;
  callbacks.on_text = [&](std::string_view piece) { text.append(piece); };
  callbacks.on_token = [&](int32_t id) {
    ids.push_back(id);
    return true;
  };
  Sampler sampler(greedy);
  const int32_t bos[1] = {1};
  auto stats = (*generator)->Generate(bos, sampler, options, callbacks);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->stop, StopReason::kEndOfText) << text;
  EXPECT_NE(text.find("Lily"), std::string::npos) << text;
  EXPECT_EQ(text, (*tokenizer)->Decode(ids)) << "streamed text differs from Decode";

  // Without a stop string every generated token reaches on_ids, in order.
  std::vector<int32_t> released;
  callbacks.on_ids = [&](int32_t id) { released.push_back(id); };
  text.clear();
  ids.clear();
  Sampler sampler1(greedy);
  stats = (*generator)->Generate(bos, sampler1, options, callbacks);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(released, ids);

  // A stop string cuts the text before it and is not emitted; on_ids gets
  // the tokens of the emitted text and none of the stop string's (" Lily"
  // starts at a token boundary, so no token straddles it).
  options.stop_strings = {" Lily"};
  std::string cut;
  released.clear();
  ids.clear();
  callbacks.on_text = [&](std::string_view piece) { cut.append(piece); };
  Sampler sampler2(greedy);
  stats = (*generator)->Generate(bos, sampler2, options, callbacks);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->stop, StopReason::kStopString);
  EXPECT_EQ(cut, text.substr(0, text.find(" Lily")));
  ASSERT_LT(released.size(), ids.size());
  EXPECT_EQ(released, std::vector<int32_t>(ids.begin(), ids.begin() + released.size()));
  EXPECT_EQ((*tokenizer)->Decode(released), cut);
}

}  // namespace
}  // namespace sinkserve::engine
