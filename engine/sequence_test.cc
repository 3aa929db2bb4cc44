#include "engine/sequence.h"

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/gguf/model_weights.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using memory::PolicyConfig;
using memory::PolicyKind;

class SequenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("SINKSERVE_SHARED");
    if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
    auto weights = ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = *weights;
    auto tokenizer = Tokenizer::FromGguf(weights_->file());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto backend = NewCpuBackend(weights_, {1});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    // A deterministic, story-like token stream longer than any budget below.
    EncodeOptions encode;
    encode.add_bos = true;
    auto tokens = tokenizer_->Encode(
        "Once upon a time, there was a little girl named Lily. She loved to play "
        "outside in the park with her big red ball. One day, she saw a bird.",
        encode);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    tokens_ = *tokens;
    while (tokens_.size() < 400) {
      tokens_.insert(tokens_.end(), tokens_.begin() + 1, tokens_.begin() + 40);
    }
    tokens_.resize(400);
  }

  std::unique_ptr<Sequence> Make(const PolicyConfig& policy, int max_step, int capacity = 0) {
    SequenceOptions options;
    options.policy = policy;
    options.max_step_tokens = max_step;
    options.capacity = capacity;
    auto seq = Sequence::Create(backend_.get(), options);
    EXPECT_TRUE(seq.ok()) << seq.status();
    return seq.ok() ? std::move(*seq) : nullptr;
  }

  std::vector<float> LastLogits(const Sequence& seq) {
    return {seq.last_logits().begin(), seq.last_logits().end()};
  }

  std::shared_ptr<const ModelWeights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
  std::vector<int32_t> tokens_;
};

PolicyConfig Policy(absl::string_view spec) {
  auto policy = PolicyConfig::Parse(std::string_view(spec.data(), spec.size()));
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *policy;
}

void ExpectClose(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_NEAR(a[i], b[i], tol * (1 + std::fabs(b[i]))) << "logit " << i;
  }
}

TEST_F(SequenceTest, ChunkingDoesNotChangeLogits) {
  auto one = Make(Policy("full"), 512, 512);
  auto chunked = Make(Policy("full"), 7, 512);
  absl::Span<const int32_t> prompt(tokens_.data(), 100);
  ASSERT_TRUE(one->Feed(prompt).ok());
  ASSERT_TRUE(chunked->Feed(prompt).ok());
  ExpectClose(LastLogits(*chunked), LastLogits(*one), 1e-5);
  EXPECT_EQ(chunked->cache().size(), 100);
}

// Below its budget every policy is `full`: same cells, same logits.
TEST_F(SequenceTest, EveryPolicyEqualsFullBelowBudget) {
  absl::Span<const int32_t> prompt(tokens_.data(), 60);
  auto full = Make(Policy("full"), 16, 512);
  ASSERT_TRUE(full->Feed(prompt).ok());
  for (const char* spec : {"window(64)", "streaming(4,60)", "sirllm(4,20,40,0.9)"}) {
    SCOPED_TRACE(spec);
    auto seq = Make(Policy(spec), 16);
    ASSERT_TRUE(seq->Feed(prompt).ok());
    EXPECT_EQ(seq->cache().size(), 60);
    EXPECT_EQ(seq->cache().evicted_total(), 0);
    ExpectClose(LastLogits(*seq), LastLogits(*full), 0);
  }
}

// SirLLM scores are surprisals read off the full model's logits; BOS is +inf.
TEST_F(SequenceTest, SirLlmScoresAreSurprisals) {
  absl::Span<const int32_t> prompt(tokens_.data(), 50);
  std::vector<float> rows;  // (50, vocab)
  auto full = Make(Policy("full"), 512, 512);
  ASSERT_TRUE(full->Feed(prompt, LogitsMode::kAll, [&](absl::Span<const float> r, int64_t) {
                     rows.insert(rows.end(), r.begin(), r.end());
                   }).ok());
  const int64_t vocab = backend_->config().vocab_size;
  ASSERT_EQ(rows.size(), 50 * vocab);

  auto seq = Make(Policy("sirllm(4,100,100,1)"), 13);  // several chunks
  ASSERT_TRUE(seq->Feed(prompt).ok());
  auto cells = seq->cache().cells();
  ASSERT_EQ(cells.size(), 50u);
  EXPECT_TRUE(std::isinf(cells[0].score));
  for (int i = 1; i < 50; ++i) {
    // Independent of Surprisal(): log-sum-exp by hand in long double.
    const float* row = rows.data() + (i - 1) * vocab;
    long double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<long double>(row[v]));
    const double expected = static_cast<double>(std::log(sum) - row[prompt[i]]);
    EXPECT_NEAR(cells[i].score, expected, 1e-4 * (1 + expected)) << "cell " << i;
  }
}

TEST_F(SequenceTest, LongPromptIsChunkedUnderABudget) {
  for (const char* spec : {"window(32)", "streaming(4,28)", "sirllm(4,8,20,1)"}) {
    SCOPED_TRACE(spec);
    auto seq = Make(Policy(spec), 16);
    ASSERT_TRUE(seq->Feed(tokens_).ok());
    EXPECT_LE(seq->cache().size(), 32);
    EXPECT_EQ(seq->cache().tokens_seen(), static_cast<int64_t>(tokens_.size()));
    EXPECT_EQ(seq->cache().evicted_total(), static_cast<int64_t>(tokens_.size()) - 32);
    EXPECT_TRUE(seq->cache().CheckInvariants().ok());
    if (std::string(spec) != "window(32)") {
      EXPECT_EQ(seq->cache().cells()[0].arrival, 0) << "the sink must survive";
    }
  }
}

TEST_F(SequenceTest, FullCacheIsResourceExhausted) {
  auto seq = Make(Policy("full"), 16, 40);
  absl::Status s = seq->Feed(tokens_);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(seq->cache().size(), 40);
  EXPECT_TRUE(seq->cache().CheckInvariants().ok());
}

TEST_F(SequenceTest, BadTokenIsRejectedAndNothingChanges) {
  auto seq = Make(Policy("streaming(4,28)"), 16);
  const int32_t bad[2] = {1, 100000};
  EXPECT_EQ(seq->Feed(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq->cache().size(), 0);
  EXPECT_FALSE(seq->cache().reserved());
}

// recompute(W): each token's logits are those of a fresh pass over the last W
// tokens (itself included) at positions 0..W-1.
TEST_F(SequenceTest, RecomputeReencodesTheWindow) {
  const int w = 24;
  auto seq = Make(Policy("recompute(24)"), 1);
  absl::Span<const int32_t> prompt(tokens_.data(), 80);
  ASSERT_TRUE(seq->Feed(prompt.subspan(0, 79)).ok());
  std::vector<int32_t> window;
  for (const auto& cell : seq->cache().cells()) window.push_back(cell.token);
  ASSERT_EQ(window.size(), static_cast<size_t>(w));
  window.erase(window.begin());
  ASSERT_TRUE(seq->Feed(prompt.subspan(79, 1)).ok());
  window.push_back(prompt[79]);
  auto fresh = Make(Policy("full"), 512, 512);
  ASSERT_TRUE(fresh->Feed(window).ok());
  ExpectClose(LastLogits(*seq), LastLogits(*fresh), 1e-5);
}

// The last sampled token of a turn stays pending and goes first next turn.
TEST_F(SequenceTest, TurnsLeaveTheLastTokenPending) {
  SamplerOptions greedy;
  greedy.temperature = 0;
  GeneratorOptions options;
  options.max_tokens = 5;
  options.stop_at_end_of_text = false;
  std::vector<int32_t> generated;
  GeneratorCallbacks callbacks;
  callbacks.on_token = [&](int32_t id) {
    generated.push_back(id);
    return true;
  };
  auto seq = Make(Policy("streaming(4,60)"), 16);
  Sampler sampler(greedy);
  absl::Span<const int32_t> prompt(tokens_.data(), 10);
  auto stats = RunTurn(*seq, *tokenizer_, prompt, sampler, options, callbacks);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_EQ(generated.size(), 5u);
  EXPECT_EQ(seq->cache().size(), 14);
  ASSERT_EQ(seq->pending().size(), 1u);
  EXPECT_EQ(seq->pending()[0].token, generated.back());

  // Two turns of 5 then 5 tokens with an empty prompt == one turn of 10.
  stats = RunTurn(*seq, *tokenizer_, {}, sampler, options, callbacks);
  ASSERT_TRUE(stats.ok()) << stats.status();
  auto whole = Make(Policy("streaming(4,60)"), 16);
  std::vector<int32_t> once;
  callbacks.on_token = [&](int32_t id) {
    once.push_back(id);
    return true;
  };
  options.max_tokens = 10;
  Sampler sampler2(greedy);
  ASSERT_TRUE(RunTurn(*whole, *tokenizer_, prompt, sampler2, options, callbacks).ok());
  EXPECT_EQ(generated, once);
}

}  // namespace
}  // namespace sinkserve::engine
