// MatMul against the double-precision reference, AVX2 against scalar, and the batch-invariance
// contract (bit-exact outputs whatever the batch, the row's position in it and the thread count).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/quant.h"

namespace strata::kernels {
namespace {

// Restores the default ISA choice when a test ends.
class IsaGuard {
 public:
  explicit IsaGuard(bool scalar) { ForceScalarKernels(scalar); }
  ~IsaGuard() { ForceScalarKernels(false); }
};

bool HaveAvx2() {
  ForceScalarKernels(false);
  return ActiveIsa() == "avx2";
}

// A weight matrix quantized from seeded random values; rows have different scales and some
// blocks an offset, so every block's scale (and Q4_1 minimum) differs.
struct Weights {
  Weights(DType dtype, int64_t n, int64_t k, uint32_t seed) : dtype(dtype), n(n), k(k) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> row(k);
    data.resize(RowBytes(dtype, k) * n);
    values.resize(n * k);
    for (int64_t j = 0; j < n; ++j) {
      const float scale = 0.02f * static_cast<float>(1 + j % 5);
      for (int64_t t = 0; t < k; ++t)
        row[t] = normal(rng) * scale + ((t / 32) % 3 == 2 ? scale : 0);
      QuantizeRowRef(dtype, row.data(), data.data() + j * RowBytes(dtype, k), k);
      DequantizeRowRef(dtype, data.data() + j * RowBytes(dtype, k), values.data() + j * k, k);
    }
  }
  Tensor tensor() { return Tensor(data.data(), dtype, {n, k}); }

  DType dtype;
  int64_t n, k;
  std::vector<uint8_t> data;
  std::vector<float> values;  // dequantized, row-major {n, k}
};

std::vector<float> Activations(int64_t m, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(m * k);
  for (int64_t i = 0; i < m; ++i) {
    const float scale = std::ldexp(1.0f, static_cast<int>(i % 4) - 1);  // rows of varied size
    for (int64_t t = 0; t < k; ++t) x[i * k + t] = normal(rng) * scale;
  }
  return x;
}

int64_t ActBlock(DType dtype) {
  switch (dtype) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return 32;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return 256;
    default:
      return 0;  // f32 activations
  }
}

// Tolerance of MatMul against MatMulRef for element (i, j).
//  * Activation quantization (quantized weights only): in each activation block of size B,
//    d = amax/127 and |x - d_fp16 * q| <= d * (0.5 + 127 * 2^-11) (half a step plus |q| <= 127
//    times the fp16 rounding of d; Q8_K keeps d in f32, so this over-covers it). The product error
//    is at most that times sum |w| over the block.
//  * Q4_1's precomputed s = fp16(d * sum(q)) is rounded to 2^-11 relative; its weight factor is
//    the block minimum, bounded by max |w| over the block: 2^-11 * max|w| * sum|x| per block.
//  * f32 rounding of the products, scales and the accumulation: with at most k + 16 operations in
//    any chain, (k + 16) * 2^-24 * sum |w x| bounds it (the standard gamma_n bound), doubled to
//    cover the scale products.
double RefTolerance(const Weights& w, const float* x, int64_t j) {
  const float* wr = w.values.data() + j * w.k;
  const int64_t bs = ActBlock(w.dtype);
  double tol = 2.0 * static_cast<double>(w.k + 16) * std::ldexp(1.0, -24), abs_wx = 0;
  for (int64_t t = 0; t < w.k; ++t) abs_wx += std::fabs(static_cast<double>(wr[t]) * x[t]);
  tol *= abs_wx;
  if (bs == 0) return tol + 1e-30;
  for (int64_t b = 0; b < w.k; b += bs) {
    double amax = 0, sum_w = 0, max_w = 0, sum_x = 0;
    for (int64_t t = b; t < b + bs; ++t) {
      amax = std::max(amax, std::fabs(static_cast<double>(x[t])));
      sum_w += std::fabs(wr[t]);
      max_w = std::max(max_w, std::fabs(static_cast<double>(wr[t])));
      sum_x += std::fabs(x[t]);
    }
    tol += amax / 127 * (0.5 + 127 * std::ldexp(1.0, -11)) * sum_w;
    if (w.dtype == DType::kQ4_1) tol += std::ldexp(1.0, -11) * max_w * sum_x * 1.01;
  }
  return tol + 1e-30;
}

// Tolerance of AVX2 against scalar: both quantize the activations to identical codes and scales;
// only the f32 order of the per-block products and their sum differs. Every term is bounded by
// max|w| * sum|x| over its block, and each passes through at most k/B + 16 roundings.
double IsaTolerance(const Weights& w, const float* x, int64_t j) {
  const float* wr = w.values.data() + j * w.k;
  const int64_t bs = std::max<int64_t>(ActBlock(w.dtype), 8);
  double s = 0;
  for (int64_t b = 0; b < w.k; b += bs) {
    double max_w = 0, sum_x = 0;
    for (int64_t t = b; t < std::min(w.k, b + bs); ++t) {
      max_w = std::max(max_w, std::fabs(static_cast<double>(wr[t])));
      sum_x += std::fabs(x[t]);
    }
    s += max_w * sum_x;
  }
  return 2.0 * static_cast<double>(w.k / bs + 16) * std::ldexp(1.0, -24) * s + 1e-30;
}

// Row lengths each format allows: multiples of its block; float weights take any length.
std::vector<int64_t> KsFor(DType dtype) {
  if (ActBlock(dtype) == 256) return {256, 512};
  if (ActBlock(dtype) == 32) return {32, 96, 256, 512};
  return {3, 17, 96, 256, 515};
}

using Param = std::tuple<DType, bool /*scalar*/>;

class MatMulTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (!std::get<1>(GetParam()) && !HaveAvx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  }
  std::vector<int64_t> Ks() const { return KsFor(std::get<0>(GetParam())); }
};

TEST_P(MatMulTest, MatchesReference) {
  const auto [dtype, scalar] = GetParam();
  IsaGuard isa(scalar);
  ThreadPool pool(2);
  MatMulScratch scratch;
  uint32_t seed = 1;
  for (int64_t k : Ks()) {
    for (int64_t n : {1, 3, 17, 67}) {
      Weights w(dtype, n, k, seed++);
      for (int64_t m : {1, 2, 5, 33}) {
        const std::vector<float> x = Activations(m, k, seed++);
        std::vector<float> y(m * n), ref(m * n);
        MatMul(w.tensor(), x.data(), m, y.data(), pool, scratch);
        MatMulRef(w.tensor(), x.data(), m, ref.data());
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            ASSERT_NEAR(y[i * n + j], ref[i * n + j], RefTolerance(w, x.data() + i * k, j))
                << "n=" << n << " k=" << k << " m=" << m << " at (" << i << ", " << j << ")";
          }
        }
      }
    }
  }
}

// The same row must give the same bits alone, anywhere inside batches of other rows, and with 1,
// 2 or 3 threads. n and k are large enough that the multi-threaded paths really split the work.
TEST_P(MatMulTest, BatchInvariant) {
  const auto [dtype, scalar] = GetParam();
  IsaGuard isa(scalar);
  const int64_t n = 131, k = 512;
  Weights w(dtype, n, k, 42);
  const std::vector<float> probe = Activations(1, k, 7);
  std::vector<float> alone(n);
  {
    ThreadPool pool(1);
    MatMulScratch scratch;
    MatMul(w.tensor(), probe.data(), 1, alone.data(), pool, scratch);
  }
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    MatMulScratch scratch;
    std::vector<float> y(n);
    MatMul(w.tensor(), probe.data(), 1, y.data(), pool, scratch);
    ASSERT_EQ(std::memcmp(y.data(), alone.data(), n * sizeof(float)), 0)
        << threads << " threads, m=1";
    for (int64_t m : {7, 70}) {  // 70 crosses the 64-row activation blocking
      for (int64_t pos : {int64_t{0}, m / 2, m - 1}) {
        std::vector<float> x = Activations(m, k, static_cast<uint32_t>(1000 + m + pos));
        std::copy(probe.begin(), probe.end(), x.begin() + pos * k);
        std::vector<float> yb(m * n);
        MatMul(w.tensor(), x.data(), m, yb.data(), pool, scratch);
        ASSERT_EQ(std::memcmp(yb.data() + pos * n, alone.data(), n * sizeof(float)), 0)
            << threads << " threads, m=" << m << ", position " << pos;
      }
    }
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(Info(std::get<0>(info.param)).name) +
         (std::get<1>(info.param) ? "_scalar" : "_avx2");
}

INSTANTIATE_TEST_SUITE_P(Kernels,
                         MatMulTest,
                         ::testing::Combine(::testing::Values(DType::kF32,
                                                              DType::kF16,
                                                              DType::kBF16,
                                                              DType::kQ4_0,
                                                              DType::kQ4_1,
                                                              DType::kQ8_0,
                                                              DType::kQ4_K,
                                                              DType::kQ6_K),
                                            ::testing::Bool()),
                         ParamName);

class IsaAgreementTest : public ::testing::TestWithParam<DType> {};

TEST_P(IsaAgreementTest, Avx2AgreesWithScalar) {
  const DType dtype = GetParam();
  if (!HaveAvx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  ThreadPool pool(1);
  MatMulScratch scratch;
  uint32_t seed = 100;
  for (int64_t k : KsFor(dtype)) {
    const int64_t n = 17, m = 5;
    Weights w(dtype, n, k, seed++);
    const std::vector<float> x = Activations(m, k, seed++);
    std::vector<float> fast(m * n), slow(m * n);
    {
      IsaGuard isa(false);
      MatMul(w.tensor(), x.data(), m, fast.data(), pool, scratch);
    }
    {
      IsaGuard isa(true);
      MatMul(w.tensor(), x.data(), m, slow.data(), pool, scratch);
    }
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        ASSERT_NEAR(fast[i * n + j], slow[i * n + j], IsaTolerance(w, x.data() + i * k, j))
            << "k=" << k << " at (" << i << ", " << j << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels,
                         IsaAgreementTest,
                         ::testing::Values(DType::kF32,
                                           DType::kF16,
                                           DType::kBF16,
                                           DType::kQ4_0,
                                           DType::kQ4_1,
                                           DType::kQ8_0,
                                           DType::kQ4_K,
                                           DType::kQ6_K),
                         [](const auto& info) { return std::string(Info(info.param).name); });

// MatMulMany gives each product exactly the bits a separate MatMul gives, with mixed dtypes (and
// so several activation formats) in one call, for both ISAs, decode and prefill, 1 to 3 threads.
TEST(MatMulManyTest, SameBitsAsSeparateCalls) {
  const int64_t k = 512;
  std::vector<Weights> ws;
  ws.emplace_back(DType::kQ4_1, 37, k, 1);
  ws.emplace_back(DType::kQ8_0, 12, k, 2);
  ws.emplace_back(DType::kQ4_1, 64, k, 3);
  ws.emplace_back(DType::kF16, 5, k, 4);
  ws.emplace_back(DType::kQ4_K, 9, k, 5);
  ws.emplace_back(DType::kQ6_K, 3, k, 6);
  std::vector<Tensor> tensors;
  for (Weights& w : ws) tensors.push_back(w.tensor());
  std::vector<const Tensor*> ptrs;
  for (const Tensor& t : tensors) ptrs.push_back(&t);
  for (bool scalar : {false, true}) {
    if (!scalar && !HaveAvx2()) continue;
    IsaGuard isa(scalar);
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      MatMulScratch scratch;
      for (int64_t m : {1, 9}) {
        const std::vector<float> x = Activations(m, k, static_cast<uint32_t>(m + threads));
        std::vector<std::vector<float>> together(ws.size()), apart(ws.size());
        std::vector<float*> ys;
        for (size_t t = 0; t < ws.size(); ++t) {
          together[t].resize(m * ws[t].n);
          apart[t].resize(m * ws[t].n);
          ys.push_back(together[t].data());
          MatMul(tensors[t], x.data(), m, apart[t].data(), pool, scratch);
        }
        MatMulMany(ptrs, x.data(), m, ys, pool, scratch);
        for (size_t t = 0; t < ws.size(); ++t) {
          ASSERT_EQ(std::memcmp(together[t].data(), apart[t].data(), together[t].size() * 4), 0)
              << "product " << t << (scalar ? " scalar" : " avx2") << ", " << threads
              << " threads, m=" << m;
        }
      }
    }
  }
}

TEST(MatMulTest, ScratchGrowsOnce) {
  Weights w(DType::kQ4_1, 8, 64, 3);
  ThreadPool pool(1);
  MatMulScratch scratch;
  const std::vector<float> x = Activations(4, 64, 5);
  std::vector<float> y(4 * 8);
  MatMul(w.tensor(), x.data(), 4, y.data(), pool, scratch);
  void* const first = scratch.activations.data();
  MatMul(w.tensor(), x.data(), 1, y.data(), pool, scratch);
  MatMul(w.tensor(), x.data(), 4, y.data(), pool, scratch);
  EXPECT_EQ(scratch.activations.data(), first);
}

}  // namespace
}  // namespace strata::kernels
