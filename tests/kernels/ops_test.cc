// RmsNorm, Rope, SwiGlu and GetRow against straightforward double-precision references.
#include "kernels/ops.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/quant.h"

namespace strata::kernels {
namespace {

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = normal(rng);
  return v;
}

TEST(RmsNormTest, MatchesDoubleReference) {
  for (int64_t n : {1, 7, 16, 64, 67, 576}) {
    const int64_t m = 3;
    const std::vector<float> x = Random(m * n, 1 + n, 3.0f), w = Random(n, 2 + n);
    std::vector<float> y(m * n);
    RmsNorm(x.data(), w.data(), m, n, 1e-5f, y.data());
    for (int64_t i = 0; i < m; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(x[i * n + j]) * x[i * n + j];
      const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
      for (int64_t j = 0; j < n; ++j) {
        const double ref = x[i * n + j] * scale * w[j];
        // f32 sum of n squares: relative error <= (n + 4) * 2^-24; a few more roundings after.
        ASSERT_NEAR(y[i * n + j], ref, std::fabs(ref) * (n + 16) * std::ldexp(1.0, -24) + 1e-30)
            << "n=" << n << " row " << i << " col " << j;
      }
    }
  }
}

TEST(RmsNormTest, RowsAreIndependent) {
  const int64_t n = 67;
  const std::vector<float> x = Random(5 * n, 3), w = Random(n, 4);
  std::vector<float> all(5 * n), one(n);
  RmsNorm(x.data(), w.data(), 5, n, 1e-6f, all.data());
  for (int64_t i = 0; i < 5; ++i) {
    RmsNorm(x.data() + i * n, w.data(), 1, n, 1e-6f, one.data());
    EXPECT_EQ(std::memcmp(one.data(), all.data() + i * n, n * sizeof(float)), 0);
  }
}

struct RopeCase {
  int head_dim, rot_dim;
  bool neox;
  float freq_scale;
};

class RopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeTest, MatchesDoubleReference) {
  const RopeCase c = GetParam();
  RopeParams p;
  p.head_dim = c.head_dim;
  p.rot_dim = c.rot_dim;
  p.neox = c.neox;
  p.freq_scale = c.freq_scale;
  const int n_heads = 3;
  const std::vector<int32_t> positions = {0, 1, 5, 77, 511, 1000};
  const int64_t m = positions.size(), width = n_heads * c.head_dim;
  const std::vector<float> x = Random(m * width, 9);
  std::vector<float> y = x;
  Rope(y.data(), positions.data(), m, n_heads, p);
  for (int64_t i = 0; i < m; ++i) {
    for (int h = 0; h < n_heads; ++h) {
      const float* in = x.data() + i * width + h * c.head_dim;
      const float* out = y.data() + i * width + h * c.head_dim;
      for (int d = c.rot_dim; d < c.head_dim; ++d) ASSERT_EQ(out[d], in[d]);  // not rotated
      for (int j = 0; j < c.rot_dim / 2; ++j) {
        const int a = c.neox ? j : 2 * j, b = c.neox ? j + c.rot_dim / 2 : 2 * j + 1;
        const double theta = positions[i] * static_cast<double>(c.freq_scale) *
                             std::pow(10000.0, -2.0 * j / c.rot_dim);
        const double ra = in[a] * std::cos(theta) - in[b] * std::sin(theta);
        const double rb = in[a] * std::sin(theta) + in[b] * std::cos(theta);
        // The f32 angle (p * s^j built by repeated multiplication, as GGML does) is off by about
        // (j + 2) * 2^-24 relative, so up to ~2e-4 rad at position 1000; the rotation adds a few
        // ulps of |x|.
        const double tol =
            (std::fabs(in[a]) + std::fabs(in[b])) * (theta * (j + 4) * std::ldexp(1.0, -24) + 1e-6);
        ASSERT_NEAR(out[a], ra, tol) << "pos " << positions[i] << " pair " << j;
        ASSERT_NEAR(out[b], rb, tol) << "pos " << positions[i] << " pair " << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Modes,
                         RopeTest,
                         ::testing::Values(RopeCase{64, 64, false, 1.0f},
                                           RopeCase{64, 64, true, 1.0f},
                                           RopeCase{64, 32, false, 1.0f},
                                           RopeCase{64, 32, true, 1.0f},
                                           RopeCase{128, 96, true, 0.25f},
                                           RopeCase{16, 8, false, 0.5f}));

// Angles are memoized per position: results must not depend on what ran before, including a
// call with other parameters at the same positions.
TEST(RopeCacheTest, SameBitsWhateverRanBefore) {
  RopeParams p;
  p.head_dim = 64;
  p.rot_dim = 64;
  const std::vector<int32_t> positions = {3, 67, 3, 131};  // 3, 67 and 131 share a cache slot
  const std::vector<float> x = Random(4 * 2 * 64, 10);
  std::vector<float> first = x;
  Rope(first.data(), positions.data(), 4, 2, p);
  RopeParams other = p;
  other.base = 500000.0f;
  other.rot_dim = 32;
  std::vector<float> scratch = x;
  Rope(scratch.data(), positions.data(), 4, 2, other);
  std::vector<float> again = x;
  Rope(again.data(), positions.data(), 4, 2, p);
  EXPECT_EQ(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)), 0);
  for (int i = 0; i < 4; ++i) {  // and each row alone
    std::vector<float> row(x.begin() + i * 128, x.begin() + (i + 1) * 128);
    Rope(row.data(), &positions[i], 1, 2, p);
    EXPECT_EQ(std::memcmp(row.data(), first.data() + i * 128, 128 * sizeof(float)), 0);
  }
}

TEST(SwiGluTest, ElementsAreIndependent) {
  // The vectorized chunks and the scalar tail must compute the same bits.
  const std::vector<float> gate = Random(37, 11, 3.0f), up = Random(37, 12);
  std::vector<float> all(37), one(1);
  SwiGlu(gate.data(), up.data(), 37, all.data());
  for (int i = 0; i < 37; ++i) {
    SwiGlu(&gate[i], &up[i], 1, one.data());
    EXPECT_EQ(std::memcmp(one.data(), &all[i], sizeof(float)), 0) << i;
  }
}

TEST(SwiGluTest, MatchesDoubleReference) {
  std::vector<float> gate = Random(1000, 5, 4.0f);
  gate.push_back(0.0f);
  gate.push_back(-30.0f);
  gate.push_back(30.0f);
  gate.push_back(-100.0f);
  gate.push_back(100.0f);
  const int64_t n = gate.size();
  const std::vector<float> up = Random(n, 6);
  std::vector<float> y(n);
  SwiGlu(gate.data(), up.data(), n, y.data());
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double ref = g / (1.0 + std::exp(-g)) * up[i];
    // exp is accurate to a few ulps; then one add, one divide and one multiply.
    ASSERT_NEAR(y[i], ref, std::fabs(ref) * 1e-6 + 1e-35) << "gate " << g;
  }
}

TEST(GetRowTest, MatchesDequantize) {
  for (DType dtype : {DType::kF32,
                      DType::kF16,
                      DType::kBF16,
                      DType::kQ4_0,
                      DType::kQ4_1,
                      DType::kQ8_0,
                      DType::kQ4_K,
                      DType::kQ6_K}) {
    const int64_t n = 5, k = 512;
    const std::vector<float> src = Random(n * k, 8);
    std::vector<uint8_t> data(RowBytes(dtype, k) * n);
    for (int64_t j = 0; j < n; ++j) {
      QuantizeRowRef(dtype, src.data() + j * k, data.data() + j * RowBytes(dtype, k), k);
    }
    Tensor t(data.data(), dtype, {n, k});
    std::vector<float> row(k), ref(k);
    GetRow(t, 3, row.data());
    DequantizeRowRef(dtype, t.row(3), ref.data(), k);
    EXPECT_EQ(std::memcmp(row.data(), ref.data(), k * sizeof(float)), 0) << Info(dtype).name;
  }
}

}  // namespace
}  // namespace strata::kernels
