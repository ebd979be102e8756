// Every CUDA kernel against the CPU reference (kernels/ops.h, kernels/attention.h), and the
// batch invariance of the products and attention (a row alone vs inside a batch: bit-exact).
//
// Tolerances, relative to S = sum_k |w_jk x_ik| (the scale of a dot product):
//   products vs the CPU MatMul (same activation quantization, exact integer block dots):
//     |d| <= 1e-5 S + 1e-6 for every dtype (only the float summation order differs);
//   products vs MatMulRef (f64, unquantized activations): 1e-5 S for f32/f16/bf16 weights,
//     2e-2 S for quantized weights (q8 activation rounding);
//   RmsNorm, SwiGlu: 2e-6 relative; Rope: 2e-6 absolute + 2e-6 relative (cosf/sinf differ by
//     ulps); attention vs AttendHeadRef (f64): 2e-5 absolute on outputs of magnitude <= ~3;
//   activation quantization, f16 conversion and KV stores: bit-exact.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "tests/cuda/gpu_testing.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;
using kernels::DType;
using testkit::DeviceVec;

std::vector<float> Normal(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

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

// ---------------------------------------------------------------------------------------------
// Row-wise ops.

TEST(CudaOps, RmsNormMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t m = 3, n = 576;
  const std::vector<float> x = Normal(m * n, 1, 3.0f), w = Normal(n, 2);
  std::vector<float> cpu(m * n);
  kernels::RmsNorm(x.data(), w.data(), m, n, 1e-5f, cpu.data());
  DeviceVec<float> dx(x), dw(w), dy(m * n);
  ASSERT_TRUE(cu::RmsNorm(dx.data(), dw.data(), m, n, 1e-5f, dy.data(), nullptr).ok());
  const std::vector<float> y = dy.Download();
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], cpu[i], 2e-6 * std::fabs(cpu[i]) + 1e-7);
}

TEST(CudaOps, RopeMatchesCpuBothModes) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::vector<int32_t> pos = {0, 1, 17, 4095};
  const int64_t m = pos.size();
  for (bool neox : {false, true}) {
    for (int rot : {64, 32}) {
      const kernels::RopeParams rp{64, rot, 10000.0f, rot == 32 ? 0.5f : 1.0f, neox};
      const int heads = 3;
      const int64_t ld = heads * 64 + 8;  // strided rows: only the heads are touched
      std::vector<float> x = Normal(m * ld, 3);
      std::vector<float> cpu(m * heads * 64);
      for (int64_t i = 0; i < m; ++i) {
        std::copy(
            x.begin() + i * ld, x.begin() + i * ld + heads * 64, cpu.begin() + i * heads * 64);
      }
      kernels::Rope(cpu.data(), pos.data(), m, heads, rp);
      DeviceVec<float> dx(x);
      DeviceVec<int32_t> dp(pos);
      ASSERT_TRUE(cu::Rope(dx.data(),
                           ld,
                           dp.data(),
                           m,
                           heads,
                           {rp.head_dim, rp.rot_dim, rp.base, rp.freq_scale, rp.neox},
                           nullptr)
                      .ok());
      const std::vector<float> y = dx.Download();
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < heads * 64; ++j) {
          const float want = cpu[i * heads * 64 + j];
          ASSERT_NEAR(y[i * ld + j], want, 2e-6 + 2e-6 * std::fabs(want))
              << "neox " << neox << " rot " << rot << " row " << i << " col " << j;
        }
        for (int64_t j = heads * 64; j < ld; ++j) ASSERT_EQ(y[i * ld + j], x[i * ld + j]);
      }
    }
  }
}

TEST(CudaOps, SwiGluAddSumAndConversions) {
  STRATA_SKIP_WITHOUT_GPU();
  const int64_t m = 2, n = 300;
  const std::vector<float> g = Normal(m * 2 * n, 1, 4.0f);
  std::vector<float> gate(m * n), up(m * n), cpu(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      gate[i * n + j] = g[i * 2 * n + j];
      up[i * n + j] = g[i * 2 * n + n + j];
    }
  }
  kernels::SwiGlu(gate.data(), up.data(), m * n, cpu.data());
  DeviceVec<float> dg(g), dout(m * n);
  ASSERT_TRUE(cu::SwiGlu(dg.data(), dg.data() + n, 2 * n, m, n, dout.data(), n, nullptr).ok());
  const std::vector<float> out = dout.Download();
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], cpu[i], 2e-6 * std::fabs(cpu[i]) + 1e-7) << i;
  }

  const std::vector<float> a = Normal(1000, 2), b = Normal(3000, 3);
  DeviceVec<float> da(a), db(b);
  ASSERT_TRUE(cu::Add(da.data(), db.data(), 1000, nullptr).ok());
  std::vector<float> sum = da.Download();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sum[i], a[i] + b[i]);
  DeviceVec<float> parts(b), acc(a);
  ASSERT_TRUE(cu::SumParts(parts.data(), 3, 1000, acc.data(), true, nullptr).ok());
  sum = acc.Download();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sum[i], a[i] + ((b[i] + b[1000 + i]) + b[2000 + i]));

  // f32 -> f16 over awkward values, and f16 -> f32 over every finite pattern.
  std::vector<float> f = Normal(4096, 4, 100.0f);
  for (float v : {0.0f, -0.0f, 1e-8f, 6e-8f, 3e-5f, 65504.0f, 65520.0f, 1e6f, -1e6f, INFINITY}) {
    f.push_back(v);
  }
  DeviceVec<float> df(f);
  DeviceVec<uint16_t> dh(f.size());
  ASSERT_TRUE(cu::ConvertF32ToF16(df.data(), dh.data(), f.size(), nullptr).ok());
  const std::vector<uint16_t> h = dh.Download();
  for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(h[i], kernels::Fp32ToFp16(f[i])) << f[i];
  std::vector<uint16_t> all;
  for (uint32_t v = 0; v < 65536; ++v) {
    if (((v >> 10) & 0x1F) != 0x1F) all.push_back(static_cast<uint16_t>(v));
  }
  DeviceVec<uint16_t> dall(all);
  DeviceVec<float> back(all.size());
  ASSERT_TRUE(cu::ConvertF16ToF32(dall.data(), back.data(), all.size(), nullptr).ok());
  const std::vector<float> bf = back.Download();
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(bf[i], kernels::Fp16ToFp32(all[i]));
}

// ---------------------------------------------------------------------------------------------
// KV stores and attention over a paged cache laid out as KvCache does.

struct PagedKv {
  int layers = 2, page_cells = 4, kv_dim = 0, pages = 0;
  std::vector<std::vector<uint16_t>> host;  // per page
  std::vector<DeviceVec<uint16_t>> dev;
  DeviceVec<uint64_t> table;

  PagedKv(int kv_dim_, int pages_, uint64_t seed) : kv_dim(kv_dim_), pages(pages_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<uint64_t> t;
    dev.resize(pages);
    for (int p = 0; p < pages; ++p) {
      host.emplace_back(static_cast<size_t>(layers) * 2 * page_cells * kv_dim);
      for (uint16_t& v : host.back()) v = kernels::Fp32ToFp16(dist(rng));
      dev[p].Upload(host.back());
      t.push_back(reinterpret_cast<uint64_t>(dev[p].data()));
    }
    table.Upload(t);
  }
  const uint16_t* Cell(int slot, int layer, int which) const {
    return host[slot / page_cells].data() +
           ((static_cast<size_t>(layer) * 2 + which) * page_cells + slot % page_cells) * kv_dim;
  }
};

struct AttnCase {
  int head_dim, n_head, n_head_kv;
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "head_dim " << c.head_dim << ", " << c.n_head << " heads, " << c.n_head_kv << " KV heads";
}

class CudaAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(CudaAttention, MatchesReferenceAndIsBatchInvariant) {
  STRATA_SKIP_WITHOUT_GPU();
  const AttnCase c = GetParam();
  const int hd = c.head_dim, kv_dim = c.n_head_kv * hd, q_dim = c.n_head * hd;
  const int layer = 1;
  PagedKv kv(kv_dim, 80, 21);  // 320 cells
  // Three rows: 1, 130 (two chunks) and 300 visible cells, in a scrambled slot order.
  std::mt19937_64 rng(5);
  std::vector<int32_t> slots(320);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  const std::vector<int> counts = {1, 130, 300};
  std::vector<int32_t> visible;
  std::vector<cu::KvRowInfo> rows;
  for (int n : counts) {
    cu::KvRowInfo r;
    r.slot = slots[n - 1];  // its own cell is visible
    r.vis_offset = static_cast<int32_t>(visible.size());
    r.vis_count = n;
    r.table_offset = 0;
    r.page_cells = kv.page_cells;
    visible.insert(visible.end(), slots.begin(), slots.begin() + n);
    rows.push_back(r);
  }
  const int64_t m = rows.size();
  const std::vector<float> q = Normal(m * q_dim, 8);
  DeviceVec<float> dq(q), dout(m * q_dim);
  DeviceVec<int32_t> dvis(visible);
  DeviceVec<cu::KvRowInfo> drows(rows);
  cu::KvArgs args{drows.data(),
                  dvis.data(),
                  reinterpret_cast<uint16_t* const*>(kv.table.data()),
                  layer,
                  kv_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const cu::AttentionArgs aa{c.n_head, c.n_head_kv, hd, scale};
  ASSERT_TRUE(cu::Attention(dq.data(), q_dim, m, aa, args, dout.data(), q_dim, nullptr).ok());
  const std::vector<float> out = dout.Download();
  for (int64_t i = 0; i < m; ++i) {
    const int n = counts[i];
    for (int h = 0; h < c.n_head; ++h) {
      const int kvh = h / (c.n_head / c.n_head_kv);
      std::vector<const uint16_t*> kp(n), vp(n);
      for (int j = 0; j < n; ++j) {
        kp[j] = kv.Cell(visible[rows[i].vis_offset + j], layer, 0) + kvh * hd;
        vp[j] = kv.Cell(visible[rows[i].vis_offset + j], layer, 1) + kvh * hd;
      }
      std::vector<float> ref(hd);
      kernels::AttendHeadRef(
          q.data() + i * q_dim + h * hd, kp.data(), vp.data(), n, hd, scale, ref.data());
      for (int d = 0; d < hd; ++d) {
        ASSERT_NEAR(out[i * q_dim + h * hd + d], ref[d], 2e-5)
            << "row " << i << " head " << h << " dim " << d;
      }
    }
  }
  // Each row alone: bit-identical.
  for (int64_t i = 0; i < m; ++i) {
    DeviceVec<cu::KvRowInfo> one(std::vector<cu::KvRowInfo>{rows[i]});
    DeviceVec<float> qi(std::vector<float>(q.begin() + i * q_dim, q.begin() + (i + 1) * q_dim));
    DeviceVec<float> oi(q_dim);
    cu::KvArgs a1 = args;
    a1.rows = one.data();
    ASSERT_TRUE(cu::Attention(qi.data(), q_dim, 1, aa, a1, oi.data(), q_dim, nullptr).ok());
    const std::vector<float> o = oi.Download();
    ASSERT_EQ(0, std::memcmp(o.data(), out.data() + i * q_dim, q_dim * sizeof(float))) << i;
  }

  // StoreKv: rows' K and V land, as f16, in their cells.
  const std::vector<float> kvrows = Normal(m * 2 * kv_dim, 9);
  DeviceVec<float> dkv(kvrows);
  ASSERT_TRUE(cu::StoreKv(dkv.data(), dkv.data() + kv_dim, 2 * kv_dim, m, args, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (int64_t i = 0; i < m; ++i) {
    const int slot = rows[i].slot;
    std::vector<uint16_t> page = kv.dev[slot / kv.page_cells].Download();
    for (int which = 0; which < 2; ++which) {
      const uint16_t* cell =
          page.data() + ((layer * 2 + which) * kv.page_cells + slot % kv.page_cells) * kv_dim;
      for (int e = 0; e < kv_dim; ++e) {
        ASSERT_EQ(cell[e], kernels::Fp32ToFp16(kvrows[i * 2 * kv_dim + which * kv_dim + e]));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes,
                         CudaAttention,
                         ::testing::Values(AttnCase{16, 4, 2},
                                           AttnCase{36, 2, 2},
                                           AttnCase{64, 9, 3},
                                           AttnCase{128, 4, 4},
                                           AttnCase{200, 2, 1}),
                         [](const auto& info) {
                           return "hd" + std::to_string(info.param.head_dim) + "_h" +
                                  std::to_string(info.param.n_head) + "_kv" +
                                  std::to_string(info.param.n_head_kv);
                         });

}  // namespace
}  // namespace strata
