#include "engine/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sinkserve::engine {
namespace {

using ::testing::ElementsAre;

// Options with every filter off and temperature 1: the plain softmax.
SamplerOptions Plain(uint64_t seed = 1) {
  SamplerOptions o;
  o.temperature = 1.f;
  o.top_k = 0;
  o.top_p = 1.f;
  o.min_p = 0.f;
  o.seed = seed;
  return o;
}

std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<int32_t> Ids(absl::Span<const TokenProb> dist) {
  std::vector<int32_t> ids;
  for (const TokenProb& tp : dist) ids.push_back(tp.id);
  return ids;
}

TEST(SamplerTest, GreedyPicksArgmaxLowestIdOnTies) {
  SamplerOptions o = Plain();
  o.temperature = 0.f;
  Sampler sampler(o);
  EXPECT_EQ(sampler.Sample(std::vector<float>{0.f, 3.f, -1.f, 2.f}), 1);
  EXPECT_EQ(sampler.Sample(std::vector<float>{0.f, 3.f, -1.f, 3.f}), 1);
  auto dist = sampler.Distribution(std::vector<float>{5.f, 1.f});
  ASSERT_EQ(dist.size(), 1u);
  EXPECT_EQ(dist[0].id, 0);
  EXPECT_FLOAT_EQ(dist[0].p, 1.f);
}

TEST(SamplerTest, PlainDistributionIsSoftmaxSorted) {
  Sampler sampler(Plain());
  auto dist = sampler.Distribution(LogitsOf({0.1, 0.5, 0.15, 0.25}));
  EXPECT_THAT(Ids(dist), ElementsAre(1, 3, 2, 0));
  EXPECT_NEAR(dist[0].p, 0.5, 1e-6);
  EXPECT_NEAR(dist[3].p, 0.1, 1e-6);
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  SamplerOptions o = Plain();
  o.top_k = 2;
  Sampler sampler(o);
  auto dist = sampler.Distribution(std::vector<float>{1.f, 5.f, 3.f, 4.f, 2.f});
  EXPECT_THAT(Ids(dist), ElementsAre(1, 3));
  EXPECT_NEAR(dist[0].p, 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST(SamplerTest, TopPKeepsShortestPrefixReachingP) {
  const std::vector<float> logits = LogitsOf({0.5, 0.3, 0.15, 0.05});
  SamplerOptions o = Plain();
  o.top_p = 0.79f;
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1));
  o.top_p = 0.81f;
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1, 2));
  o.top_p = 0.1f;  // always keeps at least one
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0));
  // Renormalised over the kept set.
  o.top_p = 0.79f;
  Sampler sampler(o);  // the span lives as long as the sampler
  auto dist = sampler.Distribution(logits);
  EXPECT_NEAR(dist[0].p, 0.5 / 0.8, 1e-6);
}

TEST(SamplerTest, MinPDropsTokensBelowFractionOfMax) {
  const std::vector<float> logits = LogitsOf({0.5, 0.3, 0.15, 0.05});
  SamplerOptions o = Plain();
  o.min_p = 0.2f;  // keeps p >= 0.1
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1, 2));
  o.min_p = 0.35f;  // keeps p >= 0.175
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1));
}

TEST(SamplerTest, TopPUsesTopKMassBeforeMinP) {
  // llama.cpp order: top-p sees the top-k distribution, min-p comes after.
  const std::vector<float> logits = LogitsOf({0.4, 0.3, 0.2, 0.06, 0.04});
  SamplerOptions o = Plain();
  o.top_p = 0.85f;  // 0.4 + 0.3 + 0.2 = 0.9 >= 0.85: keeps 3
  o.min_p = 0.12f;  // keeps p >= 0.048: 4 tokens
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1, 2));
  o.min_p = 0.6f;  // keeps p >= 0.24: 2 tokens
  EXPECT_THAT(Ids(Sampler(o).Distribution(logits)), ElementsAre(0, 1));
}

TEST(SamplerTest, TemperatureReshapesKeptSet) {
  const std::vector<float> logits = {2.f, 1.f, 0.f};
  SamplerOptions o = Plain();
  o.temperature = 2.f;
  Sampler sampler(o);
  auto dist = sampler.Distribution(logits);
  const double z = std::exp(1.0) + std::exp(0.5) + 1.0;
  EXPECT_NEAR(dist[0].p, std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(dist[2].p, 1.0 / z, 1e-6);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  SamplerOptions o = Plain();
  o.temperature = 0.f;
  o.repeat_penalty = 2.f;
  Sampler sampler(o);
  // Token 0 (logit 3) seen: 3 / 2 = 1.5 < 2 of token 1.
  sampler.Accept(0);
  EXPECT_EQ(sampler.Sample(std::vector<float>{3.f, 2.f}), 1);
  // Negative logits get multiplied: -1 * 2 = -2 < -1.5.
  Sampler neg(o);
  neg.Accept(0);
  EXPECT_EQ(neg.Sample(std::vector<float>{-1.f, -1.5f}), 1);
}

TEST(SamplerTest, PresenceAndFrequencyPenalties) {
  SamplerOptions o = Plain();
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.25f;
  Sampler sampler(o);
  sampler.Accept(0);
  sampler.Accept(0);
  sampler.Accept(1);
  // Token 0: 0 - 0.5 - 2 * 0.25 = -1; token 1: 0 - 0.5 - 0.25 = -0.75; token 2: 0.
  auto dist = sampler.Distribution(std::vector<float>{0.f, 0.f, 0.f});
  EXPECT_THAT(Ids(dist), ElementsAre(2, 1, 0));
  const double z = 1.0 + std::exp(-0.75) + std::exp(-1.0);
  EXPECT_NEAR(dist[0].p, 1.0 / z, 1e-6);
  EXPECT_NEAR(dist[2].p, std::exp(-1.0) / z, 1e-6);
}

TEST(SamplerTest, PenaltyWindowForgetsOldTokens) {
  SamplerOptions o = Plain();
  o.temperature = 0.f;
  o.repeat_penalty = 10.f;
  o.penalty_last_n = 2;
  Sampler sampler(o);
  sampler.Accept(0);
  EXPECT_EQ(sampler.Sample(std::vector<float>{3.f, 2.f}), 1);
  sampler.Accept(5);
  sampler.Accept(6);  // token 0 left the window
  EXPECT_EQ(sampler.Sample(std::vector<float>{3.f, 2.f}), 0);
}

TEST(SamplerTest, DrawsMatchTheDistribution) {
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  Sampler sampler(Plain(42));
  const std::vector<float> logits = LogitsOf(probs);
  std::map<int32_t, int> counts;
  constexpr int kDraws = 40000;
  for (int i = 0; i < kDraws; ++i) ++counts[sampler.Sample(logits)];
  for (size_t id = 0; id < probs.size(); ++id) {
    // 4 standard deviations of a binomial proportion.
    const double sigma = std::sqrt(probs[id] * (1 - probs[id]) / kDraws);
    EXPECT_NEAR(counts[id] / double{kDraws}, probs[id], 4 * sigma) << "token " << id;
  }
}

TEST(SamplerTest, SameSeedSameDraws) {
  const std::vector<float> logits = LogitsOf({0.25, 0.25, 0.25, 0.25});
  Sampler a(Plain(7)), b(Plain(7)), c(Plain(8));
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 64; ++i) {
    da.push_back(a.Sample(logits));
    db.push_back(b.Sample(logits));
    dc.push_back(c.Sample(logits));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(SamplerTest, SaveRestoreContinuesIdentically) {
  SamplerOptions o = Plain(3);
  o.repeat_penalty = 1.5f;
  o.penalty_last_n = 8;
  const std::vector<float> logits = {1.f, 0.8f, 0.6f, 0.4f, 0.2f, 0.f};
  Sampler a(o);
  for (int i = 0; i < 10; ++i) a.Accept(a.Sample(logits));
  const std::string state = a.SaveState();
  std::vector<int32_t> expected;
  for (int i = 0; i < 30; ++i) {
    expected.push_back(a.Sample(logits));
    a.Accept(expected.back());
  }
  SamplerOptions other = o;
  other.seed = 99;
  Sampler b(other);
  b.Accept(4);
  ASSERT_TRUE(b.RestoreState(state).ok());
  std::vector<int32_t> got;
  for (int i = 0; i < 30; ++i) {
    got.push_back(b.Sample(logits));
    b.Accept(got.back());
  }
  EXPECT_EQ(got, expected);
}

TEST(SamplerTest, RestoreRejectsGarbageAndKeepsState) {
  Sampler a(Plain(5));
  const std::string before = a.SaveState();
  EXPECT_FALSE(a.RestoreState("").ok());
  EXPECT_FALSE(a.RestoreState("nonsense bytes that are long enough to pass size checks").ok());
  a.Accept(1);
  std::string with_token = a.SaveState();
  with_token.pop_back();
  EXPECT_FALSE(a.RestoreState(with_token).ok());
  EXPECT_TRUE(a.RestoreState(before).ok());
  EXPECT_EQ(a.SaveState(), before);
}

}  // namespace
}  // namespace sinkserve::engine
