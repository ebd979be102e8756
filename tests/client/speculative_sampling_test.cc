// Verifying drafts: by exact match a verification draws the plain tokens, and rejection sampling
// preserves the target distribution (chi-square), draw by draw and end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "client/drafter.h"
#include "client/generate.h"
#include "client/local_model.h"
#include "client/speculative.h"
#include "model/sampling.h"
#include "tests/testing/paths.h"
#include "tests/testing/tiny_model.h"

namespace strata::client {
namespace {

// Pearson chi-square statistic of two samples' histograms over their shared support.
double ChiSquare(const std::map<int64_t, int>& a, const std::map<int64_t, int>& b, int* bins) {
  double na = 0, nb = 0;
  for (auto& [k, v] : a) na += v;
  for (auto& [k, v] : b) nb += v;
  std::map<int64_t, std::pair<double, double>> all;
  for (auto& [k, v] : a) all[k].first = v;
  for (auto& [k, v] : b) all[k].second = v;
  double chi = 0;
  *bins = 0;
  for (auto& [k, v] : all) {
    const double total = v.first + v.second;
    if (total < 10) continue;  // rare outcomes: too few for the approximation
    const double ea = total * na / (na + nb), eb = total * nb / (na + nb);
    chi += (v.first - ea) * (v.first - ea) / ea + (v.second - eb) * (v.second - eb) / eb;
    ++*bins;
  }
  return chi;
}

// Upper 0.1% point of chi-square with `df` degrees of freedom (Wilson-Hilferty).
double ChiSquareCritical(int df) {
  const double z = 3.09;
  const double k = df;
  return k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
}

TEST(VerifyDraftTest, ExactMatchIsPlainSampling) {
  model::Sampler sampler({.temperature = 0.9f, .top_k = 0, .seed = 3});
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.7f, -1.0f, 0.2f};
  for (int64_t pos = 0; pos < 500; ++pos) {
    bool accepted;
    const int32_t t = VerifyDraft(sampler, logits, pos, {}, 3, 1.0f, false, &accepted);
    EXPECT_EQ(t, sampler.Sample(logits, pos, {}));
    EXPECT_EQ(accepted, t == 3);
  }
}

TEST(VerifyDraftTest, RejectionSamplingPreservesTheDistribution) {
  model::Sampler sampler({.temperature = 1.0f, .top_k = 0, .seed = 11});
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.7f, -1.0f, 0.2f};
  auto dist = sampler.Distribution(logits, {});
  for (int32_t draft : {1, 4}) {  // a likely and an unlikely draft
    SCOPED_TRACE(draft);
    std::map<int64_t, int> plain, spec;
    int accepted_count = 0;
    const int n = 30000;
    for (int64_t pos = 0; pos < n; ++pos) {
      plain[sampler.Sample(logits, pos, {})]++;
      bool accepted;
      spec[VerifyDraft(sampler, logits, pos + n, {}, draft, 1.0f, true, &accepted)]++;
      accepted_count += accepted;
    }
    int bins = 0;
    const double chi = ChiSquare(plain, spec, &bins);
    EXPECT_LT(chi, ChiSquareCritical(bins - 1)) << "bins " << bins;
    double p_draft = 0;
    for (auto& c : dist) p_draft += c.token == draft ? c.prob : 0;
    EXPECT_NEAR(accepted_count / double(n), p_draft, 0.02);
  }
}

// End to end on a tiny random model: rejection-sampled generations of two tokens follow the same
// distribution as plain sampling.
TEST(RejectionSamplingTest, ShortContinuationsMatchPlainSampling) {
  const std::string path = testkit::TempPath("-spec.gguf");
  testkit::TinyModelSpec spec;
  spec.n_layer = 2;
  ASSERT_TRUE(testkit::WriteTinyModel(spec, path).ok());
  LocalModelOptions o;
  o.path = path;
  o.threads = 1;
  auto lm = LocalModel::Load(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111};
  // The model itself, drafting greedily: at a high temperature (its logits spread widely) its
  // argmax is the target's token only part of the time, so both acceptance and the residual
  // draw are exercised.
  auto greedy = ModelDrafter::Load(path, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  int drafted = 0, accepted = 0;
  // Verified at the client, and by the chain's last stage (last-hop verification).
  std::map<int64_t, int> plain, spec_hist, last_hop_hist;
  const int n = 1500;
  for (int i = 0; i < n; ++i) {
    GenerateOptions go;
    go.max_tokens = 2;
    go.stop_at_end_of_generation = false;
    go.sampling = {.temperature = 30.0f, .top_k = 4, .seed = static_cast<uint64_t>(i)};
    auto session = (*lm)->NewSession();
    auto g = Generate(**session, (*lm)->tokenizer(), prompt, go);
    ASSERT_TRUE(g.ok());
    plain[g->tokens[0] * 1000 + g->tokens[1]]++;
    go.sampling.seed = static_cast<uint64_t>(i + n);
    for (bool last_hop : {false, true}) {
      auto chain = (*lm)->NewChain();
      SpeculativeOptions so;
      so.rejection_sampling = true;
      so.gamma = 1;
      so.adaptive = false;
      so.verify_at_last_hop = last_hop;
      SpeculativeDecoder d(&(*lm)->embedder(),
                           &(*lm)->head(),
                           {chain->get()},
                           &(*lm)->pool(),
                           &(*lm)->tokenizer(),
                           greedy->get(),
                           so);
      auto s = d.Generate(prompt, go);
      ASSERT_TRUE(s.ok());
      drafted += d.stats().drafted;
      accepted += d.stats().accepted;
      (last_hop ? last_hop_hist : spec_hist)[s->tokens[0] * 1000 + s->tokens[1]]++;
    }
  }
  for (const auto* hist : {&spec_hist, &last_hop_hist}) {
    int bins = 0;
    const double chi = ChiSquare(plain, *hist, &bins);
    ASSERT_GE(bins, 4);
    EXPECT_LT(chi, ChiSquareCritical(bins - 1)) << bins << " bins";
  }
  EXPECT_GT(accepted, drafted / 10);
  EXPECT_LT(accepted, drafted * 9 / 10);
}

}  // namespace
}  // namespace strata::client
