// Agreement with an independent implementation: llama.cpp (through llama-cpp-python) on the same
// GGUF. tests/fixtures/llama_cpp_greedy.json was written by tools/make_llama_fixtures.py.
//
// Why the tolerances are what they are. Both engines quantize activations the same way (Q8_1
// blocks against the Q4_1 weights, Q8_0 against the Q8_0 head) and keep K/V in f16, but they sum
// in different orders, and llama.cpp also rounds Q and the attention probabilities to f16 while we
// keep them in f32. This 135M-parameter model amplifies such rounding: a float64 re-computation
// with the same Q8 activation rounding (numpy, dequantized weights) lands within ~0.3 of both
// engines at most steps, but at a few flat distributions (e.g. chat_story, step 7) the three
// differ by 1-3 logits. So we bound the mean |diff| tightly (kMeanLogitTolerance) and every single
// logit loosely (kLogitTolerance), and allow a greedy token to differ only where llama.cpp's own
// top-2 margin is below kTieMargin, i.e. where the two best tokens are within that noise. An
// implementation bug (wrong RoPE, norm or layout) shifts logits by many units at every step and
// flips tokens from the first step, which these bounds catch.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "client/local_chain.h"
#include "client/session.h"
#include "model/sampling.h"
#include "nlohmann/json.hpp"
#include "tests/testing/model_runner.h"
#include "tests/testing/paths.h"

namespace strata {
namespace {

constexpr float kLogitTolerance = 3.5f;
constexpr float kMeanLogitTolerance = 0.5f;
constexpr float kTieMargin = 0.5f;

nlohmann::json LoadFixture() {
  std::ifstream in(testkit::SourceDir() + "/tests/fixtures/llama_cpp_greedy.json");
  EXPECT_TRUE(in.good()) << "missing fixture";
  return nlohmann::json::parse(in);
}

class ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
    model_ = *model::Model::Open(testkit::DefaultModelPath());
    embedder_ = *model::Embedder::Load(model_);
    head_ = *model::Head::Load(model_);
    pool_ = std::make_unique<ThreadPool>(2);
  }

  std::unique_ptr<client::InferenceSession> NewSession() {
    auto chain = client::LocalChain::Create(model_, pool_.get(), size_t{256} << 20);
    EXPECT_TRUE(chain.ok());
    return std::make_unique<client::InferenceSession>(
        embedder_.get(), head_.get(), std::move(*chain), pool_.get());
  }

  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<model::Embedder> embedder_;
  std::unique_ptr<model::Head> head_;
  std::unique_ptr<ThreadPool> pool_;
};

// Teacher-forced: feed llama.cpp's own continuation so both engines see the same context at
// every step, and compare our argmax and logits with llama.cpp's at all 64 steps of every case.
TEST_F(ReferenceTest, TeacherForcedTokensAndLogitsMatchLlamaCpp) {
  nlohmann::json fixture = LoadFixture();
  ASSERT_GE(fixture["cases"].size(), 8u);
  int steps = 0, near_ties = 0, logit_rows = 0;
  float worst = 0;
  double sum_diff = 0;
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<int32_t> text = c["prompt_ids"].get<std::vector<int32_t>>();
    const size_t prompt_len = text.size();
    const auto want = c["greedy_ids"].get<std::vector<int32_t>>();
    const auto margin = c["top2_margin"].get<std::vector<float>>();
    text.insert(text.end(), want.begin(), want.end() - 1);
    auto session = NewSession();
    ASSERT_TRUE(session->Feed(text, /*all_logits=*/true).ok());
    const int V = session->n_vocab();
    std::span<const float> all = session->logits();
    for (size_t step = 0; step < want.size(); ++step, ++steps) {
      std::span<const float> l = all.subspan((prompt_len - 1 + step) * V, V);
      const int32_t got = model::Argmax(l);
      if (got != want[step]) {
        ++near_ties;
        EXPECT_LT(margin[step], kTieMargin)
            << "step " << step << ": ours " << got << ", llama.cpp " << want[step]
            << " (llama.cpp top-2 margin " << margin[step] << ")";
      }
    }
    for (const auto& row : c["top_logits"]) {
      const size_t step = row["step"].get<size_t>();
      std::span<const float> l = all.subspan((prompt_len - 1 + step) * V, V);
      const auto ids = row["ids"].get<std::vector<int32_t>>();
      const auto ref = row["logits"].get<std::vector<float>>();
      for (size_t j = 0; j < ids.size(); ++j) {
        const float diff = std::fabs(l[ids[j]] - ref[j]);
        worst = std::max(worst, diff);
        sum_diff += diff;
        EXPECT_LE(diff, kLogitTolerance) << "step " << step << " token " << ids[j];
      }
      ++logit_rows;
    }
  }
  std::cout << "[ info ] teacher-forced: " << steps - near_ties << "/" << steps
            << " greedy tokens identical (the rest at near-ties); " << logit_rows
            << " top-10 logit rows, worst |diff| " << worst << ", mean |diff| "
            << sum_diff / (10 * logit_rows) << "\n";
  EXPECT_LE(sum_diff / (10 * logit_rows), kMeanLogitTolerance);
  // Near-ties are the exception: at least 95% of the steps agree exactly.
  EXPECT_LE(near_ties * 20, steps);
}

// Free-running: each engine feeds back its own tokens. Once a near-tie flips, the texts part
// ways, so this checks that the first divergence (if any) is at a near-tie.
TEST_F(ReferenceTest, FreeRunningGreedyDivergesOnlyAtNearTies) {
  nlohmann::json fixture = LoadFixture();
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = c["greedy_ids"].get<std::vector<int32_t>>();
    const auto margin = c["top2_margin"].get<std::vector<float>>();
    auto session = NewSession();
    auto logits = session->Feed(prompt);
    ASSERT_TRUE(logits.ok()) << logits.status();
    size_t step = 0;
    for (; step < want.size(); ++step) {
      const int32_t got = model::Argmax(*logits);
      if (got != want[step]) {
        EXPECT_LT(margin[step], kTieMargin) << "diverged at step " << step;
        break;
      }
      const int32_t next[1] = {got};
      logits = session->Feed(next);
      ASSERT_TRUE(logits.ok()) << logits.status();
    }
    std::cout << "[ info ] " << c["name"].get<std::string>() << ": " << step << "/" << want.size()
              << " tokens identical before the first divergence\n";
  }
}

}  // namespace
}  // namespace strata
