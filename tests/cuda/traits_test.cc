// The per-format chunk arithmetic of the CUDA products (kernels/cuda/matmul_traits.cuh), compiled
// for the host: every weight format's unpacking (nibbles, K-quant scales, Q6_K high bits) and
// block formula checked against the CPU's scalar dot products. Runs without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cuda/matmul_traits.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "tests/cuda/gpu_testing.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;
using kernels::DType;

// The device activation layout (codes + meta pairs) of rows quantized by QuantizeRowRef, as
// QuantizeActivations writes it.
struct HostAct {
  std::vector<int8_t> q;
  std::vector<float> meta;
  std::vector<float> f;
};
HostAct Activations(cu::ActFormat fmt, const std::vector<float>& x, int64_t m, int64_t k) {
  HostAct a;
  a.f = x;
  a.q.resize(m * k);
  a.meta.resize(m * k / 16);
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x.data() + i * k;
    for (int64_t b = 0; b < k / 32; ++b) {
      float* mt = a.meta.data() + (i * (k / 32) + b) * 2;
      int8_t* codes = a.q.data() + i * k + b * 32;
      if (fmt == cu::ActFormat::kQ8_K) {
        kernels::BlockQ8_K blk;
        kernels::QuantizeRowRef(DType::kQ8_K, row + (b / 8) * 256, &blk, 256);
        std::memcpy(codes, blk.qs + (b % 8) * 32, 32);
        mt[0] = blk.d;
        mt[1] = blk.bsums[2 * (b % 8)] + blk.bsums[2 * (b % 8) + 1];
      } else if (fmt == cu::ActFormat::kQ8_1) {
        kernels::BlockQ8_1 blk;
        kernels::QuantizeRowRef(DType::kQ8_1, row + b * 32, &blk, 32);
        std::memcpy(codes, blk.qs, 32);
        mt[0] = kernels::Fp16ToFp32(blk.d);
        mt[1] = kernels::Fp16ToFp32(blk.s);
      } else if (fmt == cu::ActFormat::kQ8_0) {
        kernels::BlockQ8_0 blk;
        kernels::QuantizeRowRef(DType::kQ8_0, row + b * 32, &blk, 32);
        std::memcpy(codes, blk.qs, 32);
        mt[0] = kernels::Fp16ToFp32(blk.d);
        int sum = 0;
        for (int j = 0; j < 32; ++j) sum += blk.qs[j];
        mt[1] = static_cast<float>(sum);
      }
    }
  }
  return a;
}

template <DType T>
float LaneDot(const cu::DeviceWeightView& w, const cu::DeviceActView& x, int64_t row, int64_t i) {
  using Tr = cu::internal::Traits<T>;
  const int64_t chunks = w.k / Tr::kChunk;
  float lanes[32] = {};
  for (int64_t c = 0; c < chunks; ++c) {
    lanes[c % 32] = lanes[c % 32] + Tr::Dot(Tr::Load(w, row, c), Tr::LoadX(x, i, c));
  }
  for (int off = 16; off > 0; off >>= 1) {  // the warp's butterfly, lane 0's view
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ off];
    std::copy(next, next + 32, lanes);
  }
  return lanes[0];
}

float Dot(
    DType t, const cu::DeviceWeightView& w, const cu::DeviceActView& x, int64_t row, int64_t i) {
  switch (t) {
    case DType::kQ4_0:
      return LaneDot<DType::kQ4_0>(w, x, row, i);
    case DType::kQ4_1:
      return LaneDot<DType::kQ4_1>(w, x, row, i);
    case DType::kQ8_0:
      return LaneDot<DType::kQ8_0>(w, x, row, i);
    case DType::kQ4_K:
      return LaneDot<DType::kQ4_K>(w, x, row, i);
    case DType::kQ6_K:
      return LaneDot<DType::kQ6_K>(w, x, row, i);
    case DType::kF16:
      return LaneDot<DType::kF16>(w, x, row, i);
    case DType::kBF16:
      return LaneDot<DType::kBF16>(w, x, row, i);
    default:
      return LaneDot<DType::kF32>(w, x, row, i);
  }
}

class CudaTraitsOnHost : public ::testing::TestWithParam<DType> {};

TEST_P(CudaTraitsOnHost, ChunkDotsMatchTheCpuKernels) {
  const DType t = GetParam();
  const int64_t n = 5, k = 768, m = 3;
  std::mt19937_64 rng(17);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> wv(n * k), x(m * k);
  for (float& v : wv) v = dist(rng) * 0.1f;
  for (float& v : x) v = dist(rng);
  const size_t row_bytes = kernels::RowBytes(t, k);
  std::vector<uint8_t> ggml(row_bytes * n);
  for (int64_t r = 0; r < n; ++r) {
    kernels::QuantizeRowRef(t, wv.data() + r * k, ggml.data() + r * row_bytes, k);
  }
  const kernels::Tensor tensor(ggml.data(), t, {n, k});
  const cu::WeightRowBytes rb = cu::DeviceRowBytes(t, k);
  std::vector<uint8_t> q(rb.q * n + 16), s(rb.s * n + 16), d(rb.d * n + 16);
  cu::RepackRows(t, ggml.data(), row_bytes, n, k, q.data(), s.data(), d.data());
  const cu::DeviceWeightView w{t, n, k, q.data(), s.data(), d.data()};
  const cu::ActFormat fmt = cu::ActFormatFor(t);
  const HostAct act = Activations(fmt, x, m, k);
  cu::DeviceActView xv;
  xv.format = fmt;
  xv.k = k;
  xv.f = act.f.data();
  xv.ldf = k;
  xv.q = act.q.data();
  xv.meta = act.meta.data();

  kernels::ForceScalarKernels(true);
  ThreadPool pool(1);
  kernels::MatMulScratch scratch;
  std::vector<float> cpu(m * n), deq(k);
  kernels::MatMul(tensor, x.data(), m, cpu.data(), pool, scratch);
  kernels::ForceScalarKernels(false);
  for (int64_t j = 0; j < n; ++j) {
    kernels::DequantizeRowRef(t, tensor.row(j), deq.data(), k);
    for (int64_t i = 0; i < m; ++i) {
      double scale = 0;
      for (int64_t c = 0; c < k; ++c) scale += std::fabs(deq[c] * x[i * k + c]);
      EXPECT_NEAR(Dot(t, w, xv, j, i), cpu[i * n + j], 1e-5 * scale + 1e-6)
          << kernels::Info(t).name << " row " << j << " x " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes,
                         CudaTraitsOnHost,
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

}  // namespace
}  // namespace strata
