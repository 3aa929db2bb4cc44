#include "service/cli/perplexity_run.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/generator.h"
#include "engine/gguf/model_weights.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace sinkserve::cli {
namespace {

using memory::PolicyConfig;

class PerplexityRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* shared = std::getenv("SINKSERVE_SHARED");
    if (shared == nullptr) GTEST_SKIP() << "SINKSERVE_SHARED not set";
    auto weights = engine::ModelWeights::Load(std::string(shared) + "/models/stories260K.gguf");
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = *weights;
    auto tokenizer = engine::Tokenizer::FromGguf(weights_->file());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    auto backend = engine::NewCpuBackend(weights_, {1});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto ids = tokenizer_->Encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside "
        "in the park with her big red ball. One day, she saw a bird in a tree and said "
        "hello. The bird sang a song and Lily smiled.",
        {/*add_bos=*/true});
    ASSERT_TRUE(ids.ok()) << ids.status();
    ids_ = *ids;
    ASSERT_GT(ids_.size(), 40u);
  }

  std::vector<ScoredToken> Score(const PolicyConfig& policy, int chunk = 0,
                                 absl::Span<const int32_t> ids = {}) {
    PerplexityOptions options;
    options.policy = policy;
    options.chunk = chunk;
    auto scored = ScoreTokens(backend_.get(), ids.empty() ? absl::MakeConstSpan(ids_) : ids,
                              options);
    EXPECT_TRUE(scored.ok()) << scored.status();
    return scored.ok() ? *scored : std::vector<ScoredToken>{};
  }

  // -ln softmax(row)[target], written apart from engine::Surprisal.
  static double LogSoftmaxNll(const float* row, int vocab, int target) {
    double max = row[0];
    for (int v = 1; v < vocab; ++v) max = std::max<double>(max, row[v]);
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
    return -(row[target] - max - std::log(sum));
  }

  std::shared_ptr<const engine::ModelWeights> weights_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<engine::Backend> backend_;
  std::vector<int32_t> ids_;
};

// Full policy, token by token, against one batched forward pass with every
// position's logits.
TEST_F(PerplexityRunTest, FullMatchesOneBatchedPass) {
  const int n = ids_.size();
  const int vocab = backend_->config().vocab_size;
  auto kv = backend_->NewKvStorage(n);
  ASSERT_TRUE(kv.ok()) << kv.status();
  engine::InOrderCache cache(n);
  engine::SequenceStep step;
  step.kv = kv->get();
  cache.Plan(n, &step);
  step.tokens = ids_;
  step.logits = engine::LogitsMode::kAll;
  engine::StepResult result;
  ASSERT_TRUE(backend_->Forward({step}, &result).ok());
  const std::vector<float>& rows = result.logits[0];  // (n, vocab)
  ASSERT_EQ(rows.size(), static_cast<size_t>(n) * vocab);

  const std::vector<ScoredToken> scored = Score(PolicyConfig{});
  ASSERT_EQ(scored.size(), static_cast<size_t>(n - 1));
  double sum = 0;
  for (int i = 0; i + 1 < n; ++i) {
    EXPECT_EQ(scored[i].index, i);
    EXPECT_EQ(scored[i].token, ids_[i]);
    EXPECT_EQ(scored[i].target, ids_[i + 1]);
    const double expected = LogSoftmaxNll(&rows[static_cast<size_t>(i) * vocab], vocab,
                                          ids_[i + 1]);
    EXPECT_NEAR(scored[i].nll, expected, 1e-4) << "position " << i;
    sum += expected;
  }
  EXPECT_NEAR(Perplexity(scored), std::exp(sum / (n - 1)), 1e-4 * Perplexity(scored));
}

TEST_F(PerplexityRunTest, BoundedPoliciesEqualFullUnderBudget) {
  const int n = ids_.size();
  const std::vector<ScoredToken> full = Score(PolicyConfig{});
  for (const char* spec : {"window(%d)", "streaming(4,%d)", "streaming(1,%d)",
                           "sirllm(4,8,%d,0.9)", "recompute(%d)"}) {
    char text[64];
    std::snprintf(text, sizeof(text), spec, n);
    auto policy = PolicyConfig::Parse(text);
    ASSERT_TRUE(policy.ok()) << policy.status();
    const std::vector<ScoredToken> got = Score(*policy);
    ASSERT_EQ(got.size(), full.size()) << text;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i].nll, full[i].nll, 1e-4) << text << " position " << i;
    }
  }
}

TEST_F(PerplexityRunTest, BoundedPolicyDiffersOnceOverBudget) {
  auto policy = PolicyConfig::Parse("window(8)");
  ASSERT_TRUE(policy.ok());
  const std::vector<ScoredToken> full = Score(PolicyConfig{});
  const std::vector<ScoredToken> got = Score(*policy);
  ASSERT_EQ(got.size(), full.size());
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(got[i].nll, full[i].nll, 1e-4);
  double diff = 0;
  for (size_t i = 8; i < got.size(); ++i) diff += std::abs(got[i].nll - full[i].nll);
  EXPECT_GT(diff, 1e-2);
}

// Scores decay by d just before ids[i] is fed when i > 0 and i % R == 0, so
// after feeding ids[i] the cell that arrived as ids[j] holds
// surprisal(ids[j]) * d^(multiples of R in (j, i]).
TEST_F(PerplexityRunTest, SirLlmDecayTiming) {
  const std::vector<ScoredToken> full = Score(PolicyConfig{});
  auto policy = PolicyConfig::Parse("sirllm(4,200,8,0.5)");
  ASSERT_TRUE(policy.ok());
  PerplexityOptions options;
  options.policy = *policy;
  options.round_tokens = 5;
  int checked = 0;
  options.on_fed = [&](int64_t i, const engine::Sequence& seq) {
    ASSERT_EQ(seq.cache().size(), i + 1);  // under budget: nothing evicted
    for (const memory::Cell& cell : seq.cache().cells()) {
      const int64_t j = cell.arrival;
      if (j == 0) {
        EXPECT_EQ(cell.score, std::numeric_limits<float>::infinity());
        continue;
      }
      int decays = 0;
      for (int64_t k = j + 1; k <= i; ++k) decays += (k % 5 == 0);
      // Scores are stored as float; halving a float is exact.
      const float expected = std::ldexp(static_cast<float>(full[j - 1].nll), -decays);
      EXPECT_NEAR(cell.score, expected, 1e-5f * (1 + expected)) << "i=" << i << " j=" << j;
      ++checked;
    }
  };
  auto scored = ScoreTokens(backend_.get(), ids_, options);
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_GT(checked, 100);
}

TEST_F(PerplexityRunTest, ChunksAreFreshCaches) {
  const int chunk = 16;
  const int n = ids_.size();
  const std::vector<ScoredToken> got = Score(PolicyConfig{}, chunk);
  ASSERT_EQ(got.size(), static_cast<size_t>(n - (n + chunk - 1) / chunk));
  size_t k = 0;
  for (int begin = 0; begin < n; begin += chunk) {
    const int len = std::min(chunk, n - begin);
    if (len < 2) continue;
    const std::vector<ScoredToken> alone =
        Score(PolicyConfig{}, 0, absl::MakeConstSpan(ids_).subspan(begin, len));
    ASSERT_EQ(alone.size(), static_cast<size_t>(len - 1));
    for (const ScoredToken& s : alone) {
      ASSERT_LT(k, got.size());
      EXPECT_EQ(got[k].index, begin + s.index);
      EXPECT_EQ(got[k].target, s.target);
      EXPECT_NEAR(got[k].nll, s.nll, 1e-4);
      ++k;
    }
  }
  EXPECT_EQ(k, got.size());
}

TEST_F(PerplexityRunTest, RejectsBadInput) {
  PerplexityOptions options;
  std::vector<int32_t> one = {1};
  EXPECT_EQ(ScoreTokens(backend_.get(), one, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> bad = {1, 99999};
  EXPECT_EQ(ScoreTokens(backend_.get(), bad, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.chunk = 8;
  options.policy = *PolicyConfig::Parse("window(8)");
  EXPECT_EQ(ScoreTokens(backend_.get(), ids_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.chunk = 0;
  options.round_tokens = 0;
  EXPECT_EQ(ScoreTokens(backend_.get(), ids_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PerplexityRunTest, TokenizeFilePrependsBosOnceAndCuts) {
  const std::string path = ::testing::TempDir() + "/perplexity_run_test.txt";
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("Once upon a time.\nOnce upon a time.", f);
  std::fclose(f);
  auto ids = TokenizeFile(*tokenizer_, path, 0);
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto body = tokenizer_->Encode("Once upon a time.\nOnce upon a time.", {});
  ASSERT_TRUE(body.ok());
  ASSERT_EQ(ids->size(), body->size() + 1);
  EXPECT_EQ((*ids)[0], tokenizer_->vocab().bos_id);
  for (size_t i = 0; i < body->size(); ++i) EXPECT_EQ((*ids)[i + 1], (*body)[i]);
  auto cut = TokenizeFile(*tokenizer_, path, 3);
  ASSERT_TRUE(cut.ok());
  EXPECT_EQ(cut->size(), 3u);
  EXPECT_EQ(TokenizeFile(*tokenizer_, path + ".missing", 0).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sinkserve::cli
