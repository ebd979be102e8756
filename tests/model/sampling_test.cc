#include "model/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace strata::model {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f, 2.9f, -5.0f}; }

TEST(SamplingTest, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s(SamplingParams{.temperature = 0});
  auto l = Logits();
  EXPECT_EQ(s.Sample(l, 0, {}), 1);  // ids 1 and 4 tie at 3.0
  EXPECT_EQ(Argmax(l), 1);
}

TEST(SamplingTest, DrawDependsOnlyOnSeedAndPosition) {
  EXPECT_EQ(PositionUniform(42, 17), PositionUniform(42, 17));
  EXPECT_NE(PositionUniform(42, 17), PositionUniform(42, 18));
  EXPECT_NE(PositionUniform(42, 17), PositionUniform(43, 17));
  Sampler s(SamplingParams{.temperature = 1.0f, .top_k = 0, .seed = 5});
  auto l = Logits();
  for (int64_t pos = 0; pos < 50; ++pos) {
    // Same draw regardless of history or of what was sampled before.
    EXPECT_EQ(s.Sample(l, pos, {}), s.Sample(l, pos, std::vector<int32_t>{9, 9}));
  }
}

TEST(SamplingTest, UniformIsInUnitIntervalAndSpread) {
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    double u = PositionUniform(1, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

TEST(SamplingTest, TopKKeepsOnlyTheBest) {
  Sampler s(SamplingParams{.temperature = 1.0f, .top_k = 3});
  auto d = s.Distribution(Logits(), {});
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].token, 1);
  EXPECT_EQ(d[1].token, 4);
  EXPECT_EQ(d[2].token, 6);
  double sum = 0;
  for (auto& c : d) sum += c.prob;
  EXPECT_NEAR(sum, 1.0, 1e-6);
  // Softmax ratios at temperature 1: p(1)/p(6) = exp(3.0 - 2.9).
  EXPECT_NEAR(d[0].prob / d[2].prob, std::exp(0.1), 1e-4);
}

TEST(SamplingTest, TopPAndMinPCut) {
  // Probabilities at T=1 over {0: ln 0.5, 1: ln 0.3, 2: ln 0.15, 3: ln 0.05}.
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  auto top_p =
      Sampler(SamplingParams{.temperature = 1, .top_k = 0, .top_p = 0.75f}).Distribution(l, {});
  EXPECT_EQ(top_p.size(), 2u);  // 0.5 + 0.3 >= 0.75
  auto min_p =
      Sampler(SamplingParams{.temperature = 1, .top_k = 0, .min_p = 0.25f}).Distribution(l, {});
  EXPECT_EQ(min_p.size(), 3u);  // 0.15 >= 0.125, 0.05 < 0.125
  EXPECT_NEAR(min_p[0].prob, 0.5 / 0.95, 1e-5);
}

TEST(SamplingTest, TemperatureSharpens) {
  auto hot = Sampler(SamplingParams{.temperature = 2, .top_k = 0}).Distribution(Logits(), {});
  auto cold = Sampler(SamplingParams{.temperature = 0.25f, .top_k = 0}).Distribution(Logits(), {});
  EXPECT_GT(cold[0].prob, hot[0].prob);
}

TEST(SamplingTest, RepeatPenaltyDemotesSeenTokens) {
  std::vector<float> l = {2.0f, 1.9f, -1.0f};
  Sampler s(SamplingParams{.temperature = 0, .repeat_penalty = 1.5f});
  EXPECT_EQ(s.Sample(l, 0, {}), 0);
  EXPECT_EQ(s.Sample(l, 0, std::vector<int32_t>{0}), 1);  // 2.0 / 1.5 < 1.9
}

TEST(SamplingTest, EmpiricalFrequenciesMatchTheDistribution) {
  Sampler s(SamplingParams{.temperature = 0.7f, .top_k = 0, .seed = 99});
  auto l = Logits();
  auto d = s.Distribution(l, {});
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) counts[s.Sample(l, i, {})]++;
  for (auto& c : d) EXPECT_NEAR(counts[c.token] / double(n), c.prob, 0.015) << c.token;
}

TEST(SamplingTest, ValidateRejectsBadParameters) {
  EXPECT_FALSE(SamplingParams{.temperature = -1}.Validate().ok());
  EXPECT_FALSE(SamplingParams{.top_p = 0}.Validate().ok());
  EXPECT_FALSE(SamplingParams{.min_p = 2}.Validate().ok());
  EXPECT_FALSE(SamplingParams{.repeat_penalty = 0}.Validate().ok());
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace strata::model
