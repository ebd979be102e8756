// The CUDA products and activation quantization against the CPU reference (kernels/ops.h), and
// the batch invariance of the products (a row alone vs inside a batch: bit-exact). Row-wise ops
// and attention are tested in ops_attention_test.cc.
//
// Tolerances, relative to S = sum_k |w_jk x_ik| (the scale of a dot product):
//   products vs the CPU MatMul (same activation quantization, exact integer block dots):
//     |d| <= 1e-5 S + 1e-6 for every dtype (only the float summation order differs);
//   products vs MatMulRef (f64, unquantized activations): 1e-5 S for f32/f16/bf16 weights,
//     2e-2 S for quantized weights (q8 activation rounding);
//   activation quantization: bit-exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "tests/cuda/gpu_testing.h"
#include "tests/cuda/kernels_testing.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;
using kernels::DType;
using testkit::DeviceVec;
using testkit::Normal;

// A host weight of n x k in `dtype` from random normal values.
struct HostWeight {
  std::vector<uint8_t> bytes;
  kernels::Tensor tensor;
};
HostWeight MakeWeight(DType dtype, int64_t n, int64_t k, uint64_t seed) {
  HostWeight w;
  const size_t row = kernels::RowBytes(dtype, k);
  w.bytes.resize(row * n);
  const std::vector<float> values = Normal(static_cast<size_t>(n * k), seed, 0.1f);
  for (int64_t r = 0; r < n; ++r) {
    kernels::QuantizeRowRef(dtype, values.data() + r * k, w.bytes.data() + r * row, k);
  }
  w.tensor = kernels::Tensor(w.bytes.data(), dtype, {n, k});
  return w;
}

DType ActDType(cu::ActFormat f) {
  switch (f) {
    case cu::ActFormat::kQ8_0:
      return DType::kQ8_0;
    case cu::ActFormat::kQ8_1:
      return DType::kQ8_1;
    case cu::ActFormat::kQ8_K:
      return DType::kQ8_K;
    default:
      return DType::kF32;
  }
}

// ---------------------------------------------------------------------------------------------
// Host-only checks (run without a GPU too).

TEST(CudaWeights, RepackRoundTripsEveryDtype) {
  for (DType t : {DType::kQ4_0,
                  DType::kQ4_1,
                  DType::kQ8_0,
                  DType::kQ4_K,
                  DType::kQ6_K,
                  DType::kF16,
                  DType::kBF16,
                  DType::kF32}) {
    const int64_t n = 3, k = 512;
    HostWeight w = MakeWeight(t, n, k, 7);
    const cu::WeightRowBytes rb = cu::DeviceRowBytes(t, k);
    std::vector<uint8_t> q(rb.q * n), s(rb.s * n + 1), d(rb.d * n + 1);
    cu::RepackRows(t, w.bytes.data(), kernels::RowBytes(t, k), n, k, q.data(), s.data(), d.data());
    for (int64_t r = 0; r < n; ++r) {
      std::vector<uint8_t> back(kernels::RowBytes(t, k));
      cu::UnpackRow(
          t, k, q.data() + r * rb.q, s.data() + r * rb.s, d.data() + r * rb.d, back.data());
      EXPECT_EQ(0, std::memcmp(back.data(), w.tensor.row(r), back.size()))
          << kernels::Info(t).name << " row " << r;
    }
  }
}

TEST(CudaFacades, RejectBadShapesBeforeLaunching) {
  alignas(16) static uint8_t fake[64];
  cu::DeviceWeightView w{DType::kQ4_0, 4, 33, fake, nullptr, fake};
  cu::DeviceActView x;
  x.format = cu::ActFormat::kQ8_0;
  x.k = 33;
  x.q = reinterpret_cast<const int8_t*>(fake);
  x.meta = reinterpret_cast<const float*>(fake);
  float* y = reinterpret_cast<float*>(fake);
  EXPECT_EQ(cu::MatMul(w, x, 1, y, 4, {}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  w.k = x.k = 64;
  x.format = cu::ActFormat::kQ8_1;  // wrong format for Q4_0
  EXPECT_EQ(cu::MatMul(w, x, 1, y, 4, {}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  w.dtype = DType::kQ4_K;  // K-quants need k % 256 == 0
  EXPECT_EQ(cu::MatMul(w, x, 1, y, 4, {}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  int8_t* codes = reinterpret_cast<int8_t*>(fake);
  EXPECT_EQ(cu::QuantizeActivations(cu::ActFormat::kQ8_K, y, 64, 1, 64, codes, y, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cu::Rope(y, 8, reinterpret_cast<const int32_t*>(fake), 1, 1, {8, 10}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  cu::KvArgs kv;
  kv.kv_dim = 64;
  EXPECT_EQ(cu::Attention(y, 64, 1, {2, 1, 300, 1.0f}, kv, y, 64, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cu::Attention(y, 64, 1, {3, 2, 32, 1.0f}, kv, y, 64, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Activation quantization: bit-identical to QuantizeRowRef.

TEST(CudaQuantize, MatchesReferenceBitForBit) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t m = 3, k = 512, ldx = 520;
  std::vector<float> x = Normal(static_cast<size_t>(m * ldx), 11);
  for (int j = 0; j < 32; ++j) x[ldx + 64 + j] = 0.0f;  // an all-zero block: d = 0
  x[5] = 1e4f;                                          // a large value
  DeviceVec<float> dx(x);
  for (cu::ActFormat f : {cu::ActFormat::kQ8_0, cu::ActFormat::kQ8_1, cu::ActFormat::kQ8_K}) {
    DeviceVec<int8_t> q(m * k);
    DeviceVec<float> meta(m * k / 16);
    ASSERT_TRUE(
        cu::QuantizeActivations(f, dx.data(), ldx, m, k, q.data(), meta.data(), nullptr).ok());
    const std::vector<int8_t> hq = q.Download();
    const std::vector<float> hm = meta.Download();
    const DType t = ActDType(f);
    std::vector<uint8_t> ref(kernels::RowBytes(t, k));
    for (int64_t i = 0; i < m; ++i) {
      kernels::QuantizeRowRef(t, x.data() + i * ldx, ref.data(), k);
      for (int64_t b = 0; b < k / 32; ++b) {
        const int8_t* codes = hq.data() + i * k + b * 32;
        const float* mt = hm.data() + (i * (k / 32) + b) * 2;
        if (t == DType::kQ8_K) {
          const auto* blk = reinterpret_cast<const kernels::BlockQ8_K*>(ref.data()) + b / 8;
          ASSERT_EQ(0, std::memcmp(codes, blk->qs + (b % 8) * 32, 32))
              << "row " << i << " block " << b;
          EXPECT_EQ(mt[0], blk->d);
          EXPECT_EQ(mt[1], blk->bsums[2 * (b % 8)] + blk->bsums[2 * (b % 8) + 1]);
        } else if (t == DType::kQ8_1) {
          const auto* blk = reinterpret_cast<const kernels::BlockQ8_1*>(ref.data()) + b;
          ASSERT_EQ(0, std::memcmp(codes, blk->qs, 32)) << "row " << i << " block " << b;
          EXPECT_EQ(mt[0], kernels::Fp16ToFp32(blk->d));
          EXPECT_EQ(mt[1], kernels::Fp16ToFp32(blk->s));
        } else {
          const auto* blk = reinterpret_cast<const kernels::BlockQ8_0*>(ref.data()) + b;
          ASSERT_EQ(0, std::memcmp(codes, blk->qs, 32)) << "row " << i << " block " << b;
          EXPECT_EQ(mt[0], kernels::Fp16ToFp32(blk->d));
          EXPECT_EQ(mt[1], std::accumulate(blk->qs, blk->qs + 32, 0));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Products.

struct GpuProduct {
  int64_t n = 0, k = 0;
  cu::DeviceArena arena;
  cu::DeviceWeightView w;
  cu::ActFormat format = cu::ActFormat::kF32;
};

// y (m x ldy) = x (m x k) w^T on the GPU, through the facades: MatMul, or MatMulGemvVariant
// when `variant` >= 0.
std::vector<float> RunProduct(const GpuProduct& p,
                              const std::vector<float>& x,
                              int64_t m,
                              const cu::MatMulEpilogue& epi = {},
                              const std::vector<float>* y0 = nullptr,
                              int variant = -1) {
  DeviceVec<float> dx(x);
  DeviceVec<float> dy(static_cast<size_t>(m * p.n));
  if (y0 != nullptr) dy.Upload(*y0);
  cu::DeviceActView view;
  view.format = p.format;
  view.k = p.k;
  DeviceVec<int8_t> q(std::max<int64_t>(1, m * p.k));
  DeviceVec<float> meta(std::max<int64_t>(1, m * p.k / 16));
  // Variants run on a stream of their own (blocking, so ordered with the copies), where the PDL
  // ones chain their per-row launches; Download synchronizes the device.
  cu::Stream own;
  if (variant >= 0) {
    auto s = cu::Stream::Create(0);
    EXPECT_TRUE(s.ok()) << s.status();
    if (s.ok()) own = std::move(*s);
  }
  cudaStream_t stream = own.get();
  if (p.format == cu::ActFormat::kF32) {
    view.f = dx.data();
    view.ldf = p.k;
  } else {
    EXPECT_TRUE(
        cu::QuantizeActivations(p.format, dx.data(), p.k, m, p.k, q.data(), meta.data(), stream)
            .ok());
    view.q = q.data();
    view.meta = meta.data();
  }
  const absl::Status st =
      variant < 0 ? cu::MatMul(p.w, view, m, dy.data(), p.n, epi, nullptr)
                  : cu::MatMulGemvVariant(p.w, view, m, dy.data(), p.n, epi, variant, stream);
  EXPECT_TRUE(st.ok()) << st;
  return dy.Download();
}

class CudaMatMul : public ::testing::TestWithParam<DType> {};

TEST_P(CudaMatMul, MatchesCpuAndIsBatchInvariant) {
  STRATA_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  const int64_t n = 67, k = 512, m = 13;
  HostWeight hw = MakeWeight(t, n, k, 3);
  GpuProduct p;
  p.n = n;
  p.k = k;
  auto arena = cu::DeviceArena::Create(0, cu::UploadBytes(t, n, k));
  ASSERT_TRUE(arena.ok()) << arena.status();
  p.arena = std::move(*arena);
  const cu::WeightSlice slice{&hw.tensor};
  auto w = cu::UploadWeight({&slice, 1}, p.arena);
  ASSERT_TRUE(w.ok()) << w.status();
  p.w = *w;
  p.format = cu::ActFormatFor(t);

  const std::vector<float> x = Normal(static_cast<size_t>(m * k), 5);
  const std::vector<float> y = RunProduct(p, x, m);

  ThreadPool pool(1);
  kernels::MatMulScratch scratch;
  std::vector<float> cpu(m * n), ref(m * n), deq(k);
  kernels::MatMul(hw.tensor, x.data(), m, cpu.data(), pool, scratch);
  kernels::MatMulRef(hw.tensor, x.data(), m, ref.data());
  const double ref_tol = kernels::Info(t).quantized ? 2e-2 : 1e-5;
  for (int64_t j = 0; j < n; ++j) {
    kernels::DequantizeRowRef(t, hw.tensor.row(j), deq.data(), k);
    for (int64_t i = 0; i < m; ++i) {
      double scale = 0;
      for (int64_t c = 0; c < k; ++c) scale += std::fabs(deq[c] * x[i * k + c]);
      const float g = y[i * n + j];
      ASSERT_NEAR(g, cpu[i * n + j], 1e-5 * scale + 1e-6) << "row " << i << " col " << j;
      ASSERT_NEAR(g, ref[i * n + j], ref_tol * scale + 1e-6) << "row " << i << " col " << j;
    }
  }

  // Each row alone, and the first rows as batches of 2 and 5: bit-identical outputs.
  for (int64_t i = 0; i < m; ++i) {
    const std::vector<float> xi(x.begin() + i * k, x.begin() + (i + 1) * k);
    const std::vector<float> yi = RunProduct(p, xi, 1);
    ASSERT_EQ(0, std::memcmp(yi.data(), y.data() + i * n, n * sizeof(float))) << "row " << i;
  }
  for (int64_t mm : {2, 5}) {
    const std::vector<float> xs(x.begin(), x.begin() + mm * k);
    const std::vector<float> ys = RunProduct(p, xs, mm);
    ASSERT_EQ(0, std::memcmp(ys.data(), y.data(), mm * n * sizeof(float))) << "m=" << mm;
  }

  // Epilogue: y = y0 + (x w^T + bias), each step rounded as written.
  const std::vector<float> bias = Normal(n, 9);
  const std::vector<float> y0 = Normal(m * n, 10);
  DeviceVec<float> dbias(bias);
  const std::vector<float> yb = RunProduct(p, x, m, {dbias.data(), true}, &y0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float want = y0[i * n + j] + (y[i * n + j] + bias[j]);
      ASSERT_EQ(yb[i * n + j], want) << "row " << i << " col " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes,
                         CudaMatMul,
                         ::testing::Values(DType::kQ4_0,
                                           DType::kQ4_1,
                                           DType::kQ8_0,
                                           DType::kQ4_K,
                                           DType::kQ6_K,
                                           DType::kF16,
                                           DType::kBF16,
                                           DType::kF32),
                         [](const auto& info) {
                           return std::string(kernels::Info(info.param).name);
                         });

// A stacked upload (q|k|v) computes the same rows as separate uploads, bit for bit.
TEST(CudaMatMulStacked, EqualsSeparateProducts) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t k = 256;
  HostWeight a = MakeWeight(DType::kQ4_K, 40, k, 1), b = MakeWeight(DType::kQ4_K, 24, k, 2);
  auto arena = cu::DeviceArena::Create(0, 3 * cu::UploadBytes(DType::kQ4_K, 64, k));
  ASSERT_TRUE(arena.ok());
  const cu::WeightSlice both[] = {{&a.tensor}, {&b.tensor}};
  const cu::WeightSlice only_b[] = {{&b.tensor}};
  GpuProduct stacked, single;
  stacked.k = single.k = k;
  stacked.n = 64;
  single.n = 24;
  stacked.format = single.format = cu::ActFormat::kQ8_K;
  stacked.w = *cu::UploadWeight(both, *arena);
  single.w = *cu::UploadWeight(only_b, *arena);
  const std::vector<float> x = Normal(3 * k, 4);
  const std::vector<float> ys = RunProduct(stacked, x, 3), yb = RunProduct(single, x, 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(0, std::memcmp(ys.data() + i * 64 + 40, yb.data() + i * 24, 24 * sizeof(float)));
  }
}

// The Q4_0/Q4_1 decode variants (rows per warp, loads in flight, persistent warps, shared-memory
// activations, PDL) only remap work to threads: each, running every row alone, equals the default
// product at m = 1, 3 and 16 bit for bit (so the batched path too), with and without the
// epilogue; and the default decode product still matches the CPU within the products' tolerance.
// The shapes cover fewer chunks than lanes (k = 512), ragged chunk groups (k = 1056, 4128,
// 11008) and persistent warps that sweep several row groups (n = 4500).
TEST(CudaGemvVariants, BitIdenticalToDefaultAndMatchCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::pair<int64_t, int64_t> shapes[] = {
      {67, 512}, {131, 1056}, {300, 4096}, {97, 11008}, {4500, 4128}};
  for (DType t : {DType::kQ4_0, DType::kQ4_1}) {
    for (auto [n, k] : shapes) {
      SCOPED_TRACE(::testing::Message() << kernels::Info(t).name << " " << n << "x" << k);
      HostWeight hw = MakeWeight(t, n, k, 11 + n);
      GpuProduct p;
      p.n = n;
      p.k = k;
      auto arena = cu::DeviceArena::Create(0, cu::UploadBytes(t, n, k));
      ASSERT_TRUE(arena.ok()) << arena.status();
      p.arena = std::move(*arena);
      const cu::WeightSlice slice{&hw.tensor};
      auto w = cu::UploadWeight({&slice, 1}, p.arena);
      ASSERT_TRUE(w.ok()) << w.status();
      p.w = *w;
      p.format = cu::ActFormatFor(t);
      const std::vector<float> x = Normal(static_cast<size_t>(16 * k), 12 + k);

      for (int64_t m : {1, 3, 16}) {
        const std::vector<float> xs(x.begin(), x.begin() + m * k);
        const std::vector<float> want = RunProduct(p, xs, m);
        for (int v = 0; v < cu::GemvVariantCount(); ++v) {
          const std::vector<float> got = RunProduct(p, xs, m, {}, nullptr, v);
          ASSERT_EQ(0, std::memcmp(got.data(), want.data(), m * n * sizeof(float)))
              << "variant " << v << " " << cu::GemvVariantName(v) << ", m=" << m;
        }
      }
      const std::vector<float> bias = Normal(n, 9);
      const std::vector<float> y0 = Normal(3 * n, 10);
      DeviceVec<float> dbias(bias);
      const std::vector<float> x3(x.begin(), x.begin() + 3 * k);
      const std::vector<float> want = RunProduct(p, x3, 3, {dbias.data(), true}, &y0);
      for (int v = 0; v < cu::GemvVariantCount(); ++v) {
        const std::vector<float> got = RunProduct(p, x3, 3, {dbias.data(), true}, &y0, v);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), 3 * n * sizeof(float)))
            << "variant " << v << " " << cu::GemvVariantName(v) << " with the epilogue";
      }

      // The default decode product (m = 1) against the CPU's.
      const std::vector<float> x1(x.begin(), x.begin() + k);
      const std::vector<float> y1 = RunProduct(p, x1, 1);
      ThreadPool pool(1);
      kernels::MatMulScratch scratch;
      std::vector<float> cpu(n), deq(k);
      kernels::MatMul(hw.tensor, x1.data(), 1, cpu.data(), pool, scratch);
      for (int64_t j = 0; j < n; ++j) {
        kernels::DequantizeRowRef(t, hw.tensor.row(j), deq.data(), k);
        double scale = 0;
        for (int64_t c = 0; c < k; ++c) scale += std::fabs(deq[c] * x1[c]);
        ASSERT_NEAR(y1[j], cpu[j], 1e-5 * scale + 1e-6) << "col " << j;
      }
    }
  }
}

TEST(CudaGemvVariants, RejectOtherDtypesAndIds) {
  EXPECT_GT(cu::GemvVariantCount(), 1);
  EXPECT_GE(cu::kDefaultGemvVariant, 0);
  EXPECT_LT(cu::kDefaultGemvVariant, cu::GemvVariantCount());
  for (int v = 0; v < cu::GemvVariantCount(); ++v) EXPECT_STRNE("", cu::GemvVariantName(v));
  cu::DeviceWeightView w;
  w.dtype = DType::kQ8_0;
  w.n = 4;
  w.k = 32;
  EXPECT_EQ(cu::MatMulGemvVariant(w, {}, 1, nullptr, 4, {}, 0, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  w.dtype = DType::kQ4_0;
  EXPECT_EQ(cu::MatMulGemvVariant(w, {}, 1, nullptr, 4, {}, cu::GemvVariantCount(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
