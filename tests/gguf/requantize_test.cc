// strata quantize's core: a model rewritten with its matrices in another dtype keeps its metadata
// and its other tensors byte for byte, and every matrix holds the same values up to the new
// dtype's rounding, checked against the scalar reference conversions.
#include "gguf/requantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "gguf/reader.h"
#include "kernels/quant.h"
#include "model/llama.h"
#include "tests/testing/tiny_model.h"

namespace strata {
namespace {

using kernels::DType;

std::vector<float> Values(const gguf::GgufTensorInfo& t) {
  const int64_t cols = t.shape[t.ndim - 1];
  const int64_t rows = static_cast<int64_t>(t.bytes / kernels::RowBytes(t.dtype, cols));
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    kernels::DequantizeRowRef(
        t.dtype, t.data + r * kernels::RowBytes(t.dtype, cols), out.data() + r * cols, cols);
  }
  return out;
}

class RequantizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    in_ = testkit::TempPath(".gguf");
    testkit::TinyModelSpec spec;  // Q4_1 projections, Q8_0 embeddings
    ASSERT_TRUE(testkit::WriteTinyModel(spec, in_).ok());
  }
  std::string in_;
};

TEST_F(RequantizeTest, MatricesChangeDtypeAndKeepTheirValues) {
  const std::string out = testkit::TempPath(".gguf");
  gguf::RequantizeOptions options;
  options.type = DType::kQ8_0;
  int last_done = 0, total = 0;
  options.progress = [&](int done, int all) {
    EXPECT_EQ(done, last_done + 1);
    last_done = done;
    total = all;
  };
  auto report = gguf::Requantize(in_, out, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->converted, 0);
  EXPECT_EQ(last_done, total);
  EXPECT_EQ(total, report->converted);

  auto a = gguf::GgufFile::Open(in_);
  auto b = gguf::GgufFile::Open(out);
  ASSERT_TRUE(a.ok() && b.ok());
  for (std::string_view key : (*a)->keys()) {
    if (key == "general.file_type") continue;
    EXPECT_TRUE((*b)->Find(key) != nullptr) << key;
  }
  EXPECT_EQ(*(*b)->GetUint("general.file_type"), 7u);
  ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
  int matrices = 0;
  for (size_t i = 0; i < (*a)->tensors().size(); ++i) {
    const gguf::GgufTensorInfo& ta = (*a)->tensors()[i];
    const gguf::GgufTensorInfo& tb = (*b)->tensors()[i];
    ASSERT_EQ(ta.name, tb.name);
    ASSERT_EQ(ta.shape, tb.shape);
    if (ta.ndim < 2) {  // norms: the same bytes
      ASSERT_EQ(tb.dtype, ta.dtype);
      ASSERT_EQ(0, std::memcmp(ta.data, tb.data, ta.bytes)) << ta.name;
      continue;
    }
    ++matrices;
    EXPECT_EQ(tb.dtype, DType::kQ8_0) << ta.name;
    const std::vector<float> va = Values(ta), vb = Values(tb);
    ASSERT_EQ(va.size(), vb.size());
    // Q8_0 rounds each value to a step of its 32-block's largest magnitude / 127, the step
    // itself stored as an fp16 (relative error 2^-11, times up to 127 steps).
    for (size_t j = 0; j < va.size(); j += 32) {
      float amax = 0;
      for (size_t k = j; k < j + 32; ++k) amax = std::max(amax, std::fabs(va[k]));
      for (size_t k = j; k < j + 32; ++k) {
        ASSERT_NEAR(vb[k], va[k], amax * (0.5f / 127.0f + 1.0f / 2048.0f) + 1e-6f)
            << ta.name << " at " << k;
      }
    }
  }
  // Q8_0 embeddings are already in the dtype: copied, not converted.
  EXPECT_EQ(report->converted + report->kept, static_cast<int>((*a)->tensors().size()));

  // The copy is a model the engine loads.
  EXPECT_TRUE(model::Model::Open(out).ok());
}

TEST_F(RequantizeTest, KeepsEmbeddingsWhenAsked) {
  const std::string out = testkit::TempPath(".gguf");
  gguf::RequantizeOptions options;
  options.type = DType::kF16;
  options.keep_embeddings = true;
  ASSERT_TRUE(gguf::Requantize(in_, out, options).ok());
  auto b = gguf::GgufFile::Open(out);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*(*b)->FindTensor("token_embd.weight"))->dtype, DType::kQ8_0);
  EXPECT_EQ((*(*b)->FindTensor("blk.0.ffn_up.weight"))->dtype, DType::kF16);
}

TEST_F(RequantizeTest, RowsThatDoNotSplitIntoBlocksAreKept) {
  // 64 columns cannot hold a 256-value Q4_K block.
  const std::string out = testkit::TempPath(".gguf");
  gguf::RequantizeOptions options;
  options.type = DType::kQ4_K;
  auto report = gguf::Requantize(in_, out, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->unfit, 0);
  auto b = gguf::GgufFile::Open(out);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*(*b)->FindTensor("blk.0.attn_q.weight"))->dtype, DType::kQ4_1);
}

TEST_F(RequantizeTest, KeepsOnlyTheFirstLayersWhenAsked) {
  const std::string out = testkit::TempPath(".gguf");
  gguf::RequantizeOptions options;
  options.type = DType::kQ8_0;
  options.layers = 3;
  auto report = gguf::Requantize(in_, out, options);
  ASSERT_TRUE(report.ok()) << report.status();
  auto a = gguf::GgufFile::Open(in_);
  auto b = gguf::GgufFile::Open(out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*(*a)->GetUint("llama.block_count"), 4u);
  EXPECT_EQ(*(*b)->GetUint("llama.block_count"), 3u);
  int per_layer = 0;
  for (const gguf::GgufTensorInfo& t : (*a)->tensors()) {
    per_layer += t.name.rfind("blk.3.", 0) == 0;
    const bool kept = (*b)->FindTensor(t.name).ok();
    EXPECT_EQ(kept, t.name.rfind("blk.3.", 0) != 0) << t.name;
  }
  EXPECT_GT(per_layer, 0);
  EXPECT_EQ(report->dropped, per_layer);
  auto m = model::Model::Open(out);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->hparams().n_layer, 3);

  for (int bad : {-1, 5}) {
    options.layers = bad;
    EXPECT_EQ(gguf::Requantize(in_, testkit::TempPath(".gguf"), options).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(RequantizeTest, BadRequestsFailClearly) {
  gguf::RequantizeOptions options;
  options.type = DType::kQ8_K;  // activations only
  EXPECT_EQ(gguf::Requantize(in_, testkit::TempPath(".gguf"), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.type = DType::kQ4_0;
  EXPECT_EQ(gguf::Requantize(in_, in_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gguf::Requantize("/nonexistent/model.gguf", testkit::TempPath(".gguf"), options)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  // The input is untouched after the refusals.
  EXPECT_TRUE(model::Model::Open(in_).ok());
}

}  // namespace
}  // namespace strata
