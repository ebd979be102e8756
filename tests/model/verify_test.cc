// Verifying a run of drafts in one call (what the last hop does) decides exactly what deciding
// each position on its own decides, and malformed verifications are refused.
#include "model/verify.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace strata::model {
namespace {

constexpr int kVocab = 50;

std::vector<float> RandomLogits(int rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> l(static_cast<size_t>(rows) * kVocab);
  for (float& x : l) x = n(rng);
  return l;
}

// Position by position, as the client does: the text so far is the whole history.
std::vector<int32_t> OneByOne(std::span<const float> logits,
                              const VerifySpec& spec,
                              std::vector<int32_t> text) {
  const Sampler sampler(spec.sampling);
  std::vector<int32_t> out;
  for (size_t i = 0; i < spec.drafts.size(); ++i) {
    bool accepted = false;
    const int32_t t = VerifyDraft(sampler,
                                  logits.subspan(i * kVocab, kVocab),
                                  spec.first_position + static_cast<int64_t>(i),
                                  text,
                                  spec.drafts[i],
                                  1.0f,
                                  spec.rejection_sampling,
                                  &accepted);
    out.push_back(t);
    if (!accepted) break;
    text.push_back(t);
  }
  return out;
}

TEST(VerifyRowsTest, DecidesWhatEachPositionAloneDecides) {
  constexpr int kRows = 8;
  std::mt19937 rng(7);
  // A long text; the last hop gets only the tail the repetition penalty sees.
  std::vector<int32_t> text(300);
  for (int32_t& t : text) t = static_cast<int32_t>(rng() % kVocab);
  int checked_rejections = 0, checked_full = 0;
  for (uint32_t trial = 0; trial < 300; ++trial) {
    const auto logits = RandomLogits(kRows, trial);
    VerifySpec spec;
    spec.sampling.temperature = trial % 3 == 0 ? 0.0f : 0.9f;
    spec.sampling.top_k = trial % 2 ? 0 : 20;
    spec.sampling.repeat_penalty = trial % 4 == 0 ? 1.0f : 1.3f;
    spec.sampling.repeat_last_n = 16;
    spec.sampling.seed = trial;
    spec.rejection_sampling = trial % 5 == 1;
    spec.first_position = static_cast<int64_t>(text.size());
    spec.history.assign(text.end() - 16, text.end());
    // Drafts that are the target's own choices for a while, then wrong ones.
    std::vector<int32_t> probe = text;
    const int right = static_cast<int>(trial % (kRows + 1));
    for (int i = 0; i < kRows; ++i) {
      const Sampler s(spec.sampling);
      const int32_t t = s.Sample(std::span<const float>(logits).subspan(i * kVocab, kVocab),
                                 spec.first_position + i,
                                 probe);
      spec.drafts.push_back(i < right ? t : (t + 1 + static_cast<int32_t>(trial)) % kVocab);
      probe.push_back(t);
    }
    const std::vector<int32_t> got = VerifyRows(logits, kVocab, spec);
    EXPECT_EQ(got, OneByOne(logits, spec, text)) << "trial " << trial;
    ASSERT_FALSE(got.empty());
    if (static_cast<int>(got.size()) < kRows) ++checked_rejections;
    if (static_cast<int>(got.size()) == kRows) ++checked_full;
  }
  // Both outcomes were exercised.
  EXPECT_GT(checked_rejections, 50);
  EXPECT_GT(checked_full, 10);
}

TEST(VerifyRowsTest, MalformedVerificationsAreRefused) {
  VerifySpec ok;
  ok.first_position = 5;
  ok.drafts = {3, -1};
  EXPECT_TRUE(ValidateVerifySpec(ok, 2, kVocab).ok());
  VerifySpec v = ok;
  v.drafts = {3};
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  v = ok;
  v.drafts = {3, kVocab};
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  v = ok;
  v.drafts = {-2, 1};
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  v = ok;
  v.history = {1, -4};
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  v = ok;
  v.sampling.temperature = -1.0f;
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  v = ok;
  v.first_position = 0;
  EXPECT_EQ(ValidateVerifySpec(v, 2, kVocab).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateVerifySpec(ok, 0, kVocab).code(), absl::StatusCode::kInvalidArgument);
  // Out rows decide the positions after them: they must be a chain.
  EXPECT_EQ(*FirstDecidedPosition(std::vector<int32_t>{7, 8, 9}), 8);
  EXPECT_EQ(FirstDecidedPosition(std::vector<int32_t>{7, 9}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FirstDecidedPosition({}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::model
