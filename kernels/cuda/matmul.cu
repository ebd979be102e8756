// Activation quantization and the weight x activation products (decode GEMV and batched GEMM are
// the same kernel at different tile sizes).
//
// Batch invariance: one output element y[i, j] is the butterfly sum, over the 32 lanes of a warp,
// of per-lane partials; lane l adds the contributions of chunks l, l + 32, l + 64, ... of the row,
// in that order; each chunk's contribution is an exact integer dot product (dp4a over the codes)
// scaled by float block scales in a fixed expression. None of that depends on how many weight rows
// a warp holds (RPW), how many activation rows a block sweeps (NR) or how many chunks are loaded
// ahead (U), so y[i, j] is bit-identical for m = 1 and for any batch.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/launchers.h"
#include "kernels/cuda/matmul_traits.cuh"

namespace strata::kernels::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block of the product kernels
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ float RoundHalf(float f) { return __half2float(__float2half_rn(f)); }

using namespace internal;  // Traits and the chunk helpers

struct MatMulParams {
  DeviceWeightView w;
  DeviceActView x;
  int64_t m;
  float* y;
  int64_t ldy;
  const float* bias;
  bool accumulate;
};

// One warp computes RPW weight rows against the NR activation rows of its block; each lane walks
// the chunks lane, lane + 32, ... loading U chunks ahead.
template <DType T, int RPW, int NR, int U>
__global__ void __launch_bounds__(kThreads) MatMulKernel(const MatMulParams p) {
  using Tr = Traits<T>;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.y) * kWarps + warp) * RPW;
  if (row0 >= p.w.n) return;
  const int64_t x0 = static_cast<int64_t>(blockIdx.x) * NR;
  int64_t wrow[RPW], xrow[NR];
#pragma unroll
  for (int r = 0; r < RPW; ++r) wrow[r] = min(row0 + r, p.w.n - 1);
#pragma unroll
  for (int r = 0; r < NR; ++r) xrow[r] = min(x0 + r, p.m - 1);
  float acc[RPW][NR];
#pragma unroll
  for (int a = 0; a < RPW; ++a) {
#pragma unroll
    for (int r = 0; r < NR; ++r) acc[a][r] = 0.0f;
  }
  const int64_t chunks = p.w.k / Tr::kChunk;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * U) {
    typename Tr::W wd[U][RPW];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c0 + 32 * u < chunks) {
#pragma unroll
        for (int a = 0; a < RPW; ++a) wd[u][a] = Tr::Load(p.w, wrow[a], c0 + 32 * u);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (c0 + 32 * u < chunks) {
#pragma unroll
        for (int r = 0; r < NR; ++r) {
          const typename Tr::X xd = Tr::LoadX(p.x, xrow[r], c0 + 32 * u);
#pragma unroll
          for (int a = 0; a < RPW; ++a) acc[a][r] = __fadd_rn(acc[a][r], Tr::Dot(wd[u][a], xd));
        }
      }
    }
  }
#pragma unroll
  for (int a = 0; a < RPW; ++a) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      float v = acc[a][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFull, v, off));
      const int64_t j = row0 + a, i = x0 + r;
      if (lane == ((a * NR + r) & 31) && j < p.w.n && i < p.m) {
        float out = v;
        if (p.bias != nullptr) out = __fadd_rn(out, p.bias[j]);
        float* dst = p.y + i * p.ldy + j;
        if (p.accumulate) out = __fadd_rn(*dst, out);
        *dst = out;
      }
    }
  }
}

template <DType T, int RPW, int NR, int U>
void Launch(const MatMulParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.m + NR - 1) / NR),
                  static_cast<unsigned>((p.w.n + kWarps * RPW - 1) / (kWarps * RPW)));
  MatMulKernel<T, RPW, NR, U><<<grid, kThreads, 0, stream>>>(p);
}

// Tile shapes by batch size: decode reads every weight once with deep prefetch; larger batches
// keep more weight rows and activation rows in registers for reuse.
template <DType T>
void LaunchFor(const MatMulParams& p, cudaStream_t stream) {
  if (p.m == 1) {
    Launch<T, 1, 1, 4>(p, stream);
  } else if (p.m <= 4) {
    Launch<T, 2, 4, 2>(p, stream);
  } else {
    Launch<T, 4, 8, 1>(p, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers: the arithmetic of QuantizeQ8Block (kernels/quant_ref.cc), so the codes
// and scales are bit-identical to the CPU's.

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}
__device__ __forceinline__ int WarpSum(int v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
__device__ __forceinline__ int8_t Code(float v, float id) {
  const int q = __float2int_rn(__fmul_rn(v, id));
  return static_cast<int8_t>(max(-127, min(127, q)));
}

// One warp per 32-block (Q8_0 / Q8_1).
__global__ void QuantizeQ8Kernel(
    const float* x, int64_t ldx, int64_t m, int64_t k, int8_t* q, float* meta, bool q8_1) {
  const int64_t nb = k / 32;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (blk >= m * nb) return;
  const int lane = threadIdx.x & 31;
  const int64_t i = blk / nb, b = blk % nb;
  const float v = x[i * ldx + b * 32 + lane];
  const float amax = WarpMax(fabsf(v));
  const float d = __fdiv_rn(amax, 127.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  const int8_t c = Code(v, id);
  q[i * k + b * 32 + lane] = c;
  const int sum = WarpSum(c);
  if (lane == 0) {
    float* mt = meta + (i * nb + b) * 2;
    mt[0] = RoundHalf(d);
    mt[1] = q8_1 ? RoundHalf(__fmul_rn(d, static_cast<float>(sum))) : static_cast<float>(sum);
  }
}

// One warp per 256-block (Q8_K): lane l quantizes elements 8l..8l+7; lanes 4j..4j+3 hold
// sub-block j.
__global__ void QuantizeQ8KKernel(
    const float* x, int64_t ldx, int64_t m, int64_t k, int8_t* q, float* meta) {
  const int64_t nb = k / 256;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (blk >= m * nb) return;
  const int lane = threadIdx.x & 31;
  const int64_t i = blk / nb, b = blk % nb;
  const float* src = x + i * ldx + b * 256 + lane * 8;
  float v[8];
  float amax = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    v[e] = src[e];
    amax = fmaxf(amax, fabsf(v[e]));
  }
  amax = WarpMax(amax);
  const float d = __fdiv_rn(amax, 127.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  int sum = 0;
  uint32_t packed[2] = {0, 0};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int8_t c = Code(v[e], id);
    sum += c;
    packed[e / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(c)) << (8 * (e % 4));
  }
  *reinterpret_cast<uint2*>(q + i * k + b * 256 + lane * 8) = make_uint2(packed[0], packed[1]);
  sum += __shfl_xor_sync(kFull, sum, 1);
  sum += __shfl_xor_sync(kFull, sum, 2);
  if ((lane & 3) == 0) {
    float* mt = meta + (i * (k / 32) + b * 8 + lane / 4) * 2;
    mt[0] = d;
    mt[1] = static_cast<float>(sum);
  }
}

}  // namespace

void invokeQuantizeActivations(ActFormat format,
                               const float* x,
                               int64_t ldx,
                               int64_t m,
                               int64_t k,
                               int8_t* q,
                               float* meta,
                               cudaStream_t stream) {
  constexpr int kWarpsPerBlock = 8;
  const int64_t warps = format == ActFormat::kQ8_K ? m * (k / 256) : m * (k / 32);
  if (warps == 0) return;
  const unsigned blocks = static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (format == ActFormat::kQ8_K) {
    QuantizeQ8KKernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(x, ldx, m, k, q, meta);
  } else {
    QuantizeQ8Kernel<<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
        x, ldx, m, k, q, meta, format == ActFormat::kQ8_1);
  }
}

void invokeMatMul(const DeviceWeightView& w,
                  const DeviceActView& x,
                  int64_t m,
                  float* y,
                  int64_t ldy,
                  const float* bias,
                  bool accumulate,
                  cudaStream_t stream) {
  if (m <= 0 || w.n <= 0) return;
  const MatMulParams p{w, x, m, y, ldy, bias, accumulate};
  switch (w.dtype) {
    case DType::kQ4_0:
      return LaunchFor<DType::kQ4_0>(p, stream);
    case DType::kQ4_1:
      return LaunchFor<DType::kQ4_1>(p, stream);
    case DType::kQ8_0:
      return LaunchFor<DType::kQ8_0>(p, stream);
    case DType::kQ4_K:
      return LaunchFor<DType::kQ4_K>(p, stream);
    case DType::kQ6_K:
      return LaunchFor<DType::kQ6_K>(p, stream);
    case DType::kF16:
      return LaunchFor<DType::kF16>(p, stream);
    case DType::kBF16:
      return LaunchFor<DType::kBF16>(p, stream);
    case DType::kF32:
      return LaunchFor<DType::kF32>(p, stream);
    default:
      return;  // the facade rejects other dtypes
  }
}

}  // namespace strata::kernels::cuda
