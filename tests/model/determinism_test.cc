// DESIGN.md "Determinism": a row's logits depend only on its input, position and the KV it
// attends to — not on batching, splits, co-batched sessions or thread count. Bit-for-bit.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "kernels/dtype.h"
#include "tests/testing/model_runner.h"
#include "tests/testing/paths.h"
#include "tests/testing/tiny_model.h"

namespace strata {
namespace {

using kernels::DType;

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Index of the first differing float, for failure messages.
size_t FirstDiff(const std::vector<float>& a, const std::vector<float>& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
  }
  return std::min(a.size(), b.size());
}

#define EXPECT_BIT_EQUAL(a, b) \
  EXPECT_TRUE(BitEqual(a, b)) << "first difference at float " << FirstDiff(a, b)

struct TinyCase {
  const char* name;
  testkit::TinyModelSpec spec;
};

testkit::TinyModelSpec Spec(DType weights, DType embd, int width, bool tied, const char* arch) {
  testkit::TinyModelSpec s;
  s.arch = arch;
  s.weight_type = weights;
  s.embd_type = embd;
  s.n_embd = width;
  s.n_ff = 2 * width;
  s.tied_output = tied;
  s.output_type = width % 256 == 0 ? DType::kQ6_K : DType::kQ8_0;
  s.n_layer = 5;
  return s;
}

std::vector<TinyCase> Cases() {
  return {
      {"Q4_1", Spec(DType::kQ4_1, DType::kQ8_0, 64, true, "llama")},
      {"Q4_0", Spec(DType::kQ4_0, DType::kQ8_0, 64, true, "llama")},
      {"Q8_0", Spec(DType::kQ8_0, DType::kQ8_0, 64, false, "llama")},
      {"F16", Spec(DType::kF16, DType::kF16, 64, true, "llama")},
      {"BF16", Spec(DType::kBF16, DType::kF32, 64, true, "llama")},
      {"F32", Spec(DType::kF32, DType::kF32, 64, false, "llama")},
      {"Q4_K", Spec(DType::kQ4_K, DType::kQ6_K, 256, false, "llama")},
      {"Q6_K", Spec(DType::kQ6_K, DType::kQ4_K, 256, true, "llama")},
      {"Qwen2_Q8_0", Spec(DType::kQ8_0, DType::kQ8_0, 64, true, "qwen2")},
  };
}

class DeterminismTest : public ::testing::TestWithParam<TinyCase> {
 protected:
  static std::string ModelPath(const TinyCase& c) {
    static std::map<std::string, std::string>* paths = new std::map<std::string, std::string>();
    auto it = paths->find(c.name);
    if (it != paths->end()) return it->second;
    std::string path = testkit::TempPath(std::string("-") + c.name + ".gguf");
    absl::Status st = testkit::WriteTinyModel(c.spec, path);
    EXPECT_TRUE(st.ok()) << st;
    (*paths)[c.name] = path;
    return path;
  }
};

TEST_P(DeterminismTest, OneBatchEqualsTokenByToken) {
  testkit::ModelRunner r(ModelPath(GetParam()));
  auto tokens = RandomTokens(23, r.n_vocab(), 7);
  EXPECT_BIT_EQUAL(r.OneBatch(tokens), r.TokenByToken(tokens));
}

TEST_P(DeterminismTest, InterleavedWithAnotherSequenceInOneCache) {
  testkit::ModelRunner r(ModelPath(GetParam()));
  auto tokens = RandomTokens(19, r.n_vocab(), 8);
  auto other = RandomTokens(27, r.n_vocab(), 9);
  EXPECT_BIT_EQUAL(r.OneBatch(tokens), r.InterleavedWith(tokens, other));
}

TEST_P(DeterminismTest, BatchedAcrossSessions) {
  testkit::ModelRunner r(ModelPath(GetParam()));
  auto tokens = RandomTokens(17, r.n_vocab(), 10);
  auto other = RandomTokens(11, r.n_vocab(), 11);
  auto alone = r.OneBatch(tokens);
  EXPECT_BIT_EQUAL(alone, r.CrossSession(tokens, other, 1));
  EXPECT_BIT_EQUAL(alone, r.CrossSession(tokens, other, 5));
}

TEST_P(DeterminismTest, SpanSplitsAgree) {
  testkit::ModelRunner r(ModelPath(GetParam()));
  auto tokens = RandomTokens(13, r.n_vocab(), 12);
  const int L = r.n_layer();
  auto whole = r.OneBatch(tokens);
  for (int k = 1; k < L; ++k) {
    EXPECT_BIT_EQUAL(whole, r.Split(tokens, {0, k, L})) << "split at " << k;
  }
  EXPECT_BIT_EQUAL(whole, r.Split(tokens, {0, 1, 2, 3, 4, L}));
}

TEST_P(DeterminismTest, ThreadCountDoesNotMatter) {
  auto tokens = RandomTokens(21, testkit::kTinyVocab, 13);
  testkit::ModelRunner one(ModelPath(GetParam()), 1);
  testkit::ModelRunner two(ModelPath(GetParam()), 2);
  testkit::ModelRunner three(ModelPath(GetParam()), 3);
  auto base = one.OneBatch(tokens);
  EXPECT_BIT_EQUAL(base, two.OneBatch(tokens));
  EXPECT_BIT_EQUAL(base, three.OneBatch(tokens));
  EXPECT_BIT_EQUAL(base, two.TokenByToken(tokens));
}

TEST_P(DeterminismTest, LogitsAreFiniteAndVary) {
  // Guards the equalities above against a degenerate model (all zeros would be "equal" too).
  testkit::ModelRunner r(ModelPath(GetParam()));
  auto tokens = RandomTokens(9, r.n_vocab(), 14);
  auto logits = r.OneBatch(tokens);
  float lo = logits[0], hi = logits[0];
  for (float x : logits) {
    ASSERT_TRUE(std::isfinite(x));
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  EXPECT_GT(hi - lo, 0.1f);
}

INSTANTIATE_TEST_SUITE_P(AllWeightTypes,
                         DeterminismTest,
                         ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// The same equalities on the real default model (30 layers, GQA, Q4_1 + Q8_0).
TEST(DefaultModelDeterminism, SplitsBatchesAndThreads) {
  ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
  testkit::ModelRunner r(testkit::DefaultModelPath(), 2);
  auto tokens = RandomTokens(24, r.n_vocab(), 21);
  auto other = RandomTokens(9, r.n_vocab(), 22);
  auto whole = r.OneBatch(tokens);
  EXPECT_BIT_EQUAL(whole, r.TokenByToken(tokens));
  EXPECT_BIT_EQUAL(whole, r.CrossSession(tokens, other, 4));
  for (const std::vector<int>& b : std::vector<std::vector<int>>{
           {0, 15, 30}, {0, 10, 20, 30}, {0, 1, 29, 30}, {0, 6, 12, 18, 24, 30}}) {
    EXPECT_BIT_EQUAL(whole, r.Split(tokens, b)) << "split with " << b.size() - 1 << " spans";
  }
  testkit::ModelRunner one(testkit::DefaultModelPath(), 1);
  EXPECT_BIT_EQUAL(whole, one.OneBatch(tokens));
}

}  // namespace
}  // namespace strata
