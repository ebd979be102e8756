// Drafters: the cache that keeps them between requests, and model drafters (what reading the
// text costs; a model cut to its first layers drafts like self-speculation).
#include "client/drafter.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "gguf/requantize.h"
#include "tests/testing/paths.h"
#include "tests/testing/tiny_model.h"

namespace strata::client {
namespace {

TEST(DrafterCacheTest, LeasesAreExclusiveAndReused) {
  DrafterCache cache("", 1000, 1);
  EXPECT_EQ(cache.Take("nonsense").status().code(), absl::StatusCode::kInvalidArgument);
  Drafter* first = nullptr;
  Drafter* second = nullptr;
  {
    auto a = cache.Take("ngram");
    auto b = cache.Take("ngram");
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(a->get(), b->get());  // both in use: two instances
    first = a->get();
    second = b->get();
    EXPECT_EQ(cache.idle("ngram"), 0u);
  }
  EXPECT_EQ(cache.idle("ngram"), 2u);
  auto again = cache.Take("ngram");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->get() == first || again->get() == second);  // reused, not made anew
  EXPECT_EQ(cache.idle("ngram"), 1u);
  EXPECT_EQ(cache.idle("self:3"), 0u);
}

TEST(DrafterCacheTest, WhatWasLearnedStaysWithTheDrafterPerMode) {
  DrafterCache cache("", 1000, 1);
  Drafter* kept = nullptr;
  {
    auto lease = cache.Take("ngram");
    ASSERT_TRUE(lease.ok());
    lease->learned("chain") = std::make_shared<int>(7);
    EXPECT_EQ(lease->learned("tree"), nullptr);
    kept = lease->get();
  }
  auto back = cache.Take("ngram");
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->get(), kept);
  ASSERT_NE(back->learned("chain"), nullptr);
  EXPECT_EQ(*static_cast<int*>(back->learned("chain").get()), 7);
  EXPECT_EQ(back->learned("pipelined"), nullptr);
}

TEST(ModelDrafterTest, MeasuresWhatReadingCostsAndKnowsWhatItHasRead) {
  const std::string path = testkit::TempPath("-reader.gguf");
  ASSERT_TRUE(testkit::WriteTinyModel(testkit::TinyModelSpec{}, path).ok());
  auto d = ModelDrafter::Load(path, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT((*d)->read_ms(), 0);
  std::vector<int32_t> text = {72, 101, 108, 108, 111, 32, 119};
  EXPECT_EQ((*d)->Unread(text), static_cast<int>(text.size()));
  (*d)->Read(text);
  EXPECT_EQ((*d)->Unread(text), 0);
  text.push_back(111);
  text.push_back(114);
  EXPECT_EQ((*d)->Unread(text), 2);
  // A text that parts from what was read after two tokens: all but those two are unread.
  const std::vector<int32_t> other = {72, 101, 7, 8};
  EXPECT_EQ((*d)->Unread(other), 2);
  EXPECT_EQ(NgramDrafter().Unread(text), 0);
}

// `strata quantize --layers K` writes the model that exits after K layers: as a draft model it
// proposes exactly what self-speculation from the first K layers of the whole file does.
TEST(ModelDrafterTest, AModelCutToItsFirstLayersDraftsLikeSelfSpeculation) {
  const std::string whole = testkit::TempPath("-whole.gguf");
  const std::string cut = testkit::TempPath("-cut.gguf");
  testkit::TinyModelSpec spec;
  spec.n_layer = 4;
  ASSERT_TRUE(testkit::WriteTinyModel(spec, whole).ok());
  gguf::RequantizeOptions options;
  options.type = spec.weight_type;  // matrices already of that type are copied as they are
  options.keep_embeddings = true;
  options.layers = 2;
  auto report = gguf::Requantize(whole, cut, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->converted, 0);
  EXPECT_GT(report->dropped, 0);

  auto from_cut = ModelDrafter::Load(cut, 0, testkit::kTinyVocab, 1);
  auto self = ModelDrafter::Load(whole, 2, testkit::kTinyVocab, 1);
  auto full = ModelDrafter::Load(whole, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(from_cut.ok() && self.ok() && full.ok());
  std::vector<int32_t> text = {72, 101, 108, 108, 111, 32, 119, 111};
  bool differs_from_full = false;
  for (int step = 0; step < 6; ++step) {
    const std::vector<DraftToken> a = (*from_cut)->Next(text, 4);
    const std::vector<DraftToken> b = (*self)->Next(text, 4);
    const std::vector<DraftToken> c = (*full)->Next(text, 4);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].token, b[i].token) << "step " << step << ", candidate " << i;
      EXPECT_EQ(a[i].prob, b[i].prob) << "step " << step << ", candidate " << i;
    }
    differs_from_full |= a[0].token != c[0].token || a[0].prob != c[0].prob;
    text.push_back(a[0].token);
  }
  // Two layers are not four: the comparison would notice a cut that kept every layer.
  EXPECT_TRUE(differs_from_full);
}

}  // namespace
}  // namespace strata::client
