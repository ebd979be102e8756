// Row-wise operators and attention over the paged f16 KV cache. Each output element's arithmetic
// (and its reduction order) is fixed by the row's own inputs and model sizes, never by the batch.
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/launchers.h"

namespace strata::kernels::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ float Half(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t ToHalf(float f) { return __half_as_ushort(__float2half_rn(f)); }

unsigned Blocks(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// ---------------------------------------------------------------------------------------------
// RmsNorm: one block of 256 threads per row. Thread t sums squares of columns t, t + 256, ...;
// the 8 warps' butterfly sums are then added in warp order.

constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* x, const float* weight, int64_t n, float eps, float* out) {
  __shared__ float warp_sums[kNormThreads / 32];
  const int64_t i = blockIdx.x;
  const float* xr = x + i * n;
  float* yr = out + i * n;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += kNormThreads) s = __fadd_rn(s, __fmul_rn(xr[j], xr[j]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s = __fadd_rn(s, __shfl_xor_sync(kFull, s, off));
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = s;
  __syncthreads();
  float total = warp_sums[0];
#pragma unroll
  for (int w = 1; w < kNormThreads / 32; ++w) total = __fadd_rn(total, warp_sums[w]);
  const float mean = __fdiv_rn(total, static_cast<float>(n));
  const float scale = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
  for (int64_t j = threadIdx.x; j < n; j += kNormThreads) {
    yr[j] = __fmul_rn(__fmul_rn(xr[j], scale), weight[j]);
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE: one thread per (row, pair j) rotates pair j of every head. The angle follows the CPU
// (GGML's cache): theta_j = pos * s^j by repeated f32 multiplication, angle = freq_scale * theta.

__global__ void RopeKernel(float* x,
                           int64_t ldx,
                           const int32_t* positions,
                           int64_t m,
                           int n_heads,
                           int head_dim,
                           int half,
                           float theta_scale,
                           float freq_scale,
                           bool neox) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * half) return;
  const int64_t i = idx / half;
  const int j = static_cast<int>(idx % half);
  float theta = static_cast<float>(positions[i]);
  for (int t = 0; t < j; ++t) theta = __fmul_rn(theta, theta_scale);
  const float angle = __fmul_rn(freq_scale, theta);
  const float cs = cosf(angle), sn = sinf(angle);
  const int a = neox ? j : 2 * j, b = neox ? j + half : 2 * j + 1;
  float* row = x + i * ldx;
  for (int h = 0; h < n_heads; ++h) {
    float* v = row + static_cast<int64_t>(h) * head_dim;
    const float x0 = v[a], x1 = v[b];
    v[a] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
    v[b] = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
  }
}

// ---------------------------------------------------------------------------------------------
// Element-wise.

__global__ void SwiGluKernel(const float* gate,
                             const float* up,
                             int64_t ldi,
                             int64_t m,
                             int64_t n,
                             float* out,
                             int64_t ldo) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * n) return;
  const int64_t i = idx / n, j = idx % n;
  const float g = gate[i * ldi + j], u = up[i * ldi + j];
  out[i * ldo + j] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

__global__ void AddKernel(float* dst, const float* src, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __fadd_rn(dst[i], src[i]);
}

__global__ void SumPartsKernel(
    const float* in, int parts, int64_t count, float* out, bool accumulate) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float s = in[i];
  for (int r = 1; r < parts; ++r) s = __fadd_rn(s, in[r * count + i]);
  out[i] = accumulate ? __fadd_rn(out[i], s) : s;
}

__global__ void F32ToF16Kernel(const float* src, uint16_t* dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = ToHalf(src[i]);
}

__global__ void F16ToF32Kernel(const uint16_t* src, float* dst, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = Half(src[i]);
}

// ---------------------------------------------------------------------------------------------
// KV cache.

__device__ __forceinline__ uint16_t* CellPtr(const KvArgs& kv,
                                             const KvRowInfo& row,
                                             int32_t slot,
                                             int which) {
  const int pc = row.page_cells;
  uint16_t* page = kv.pages[row.table_offset + slot / pc];
  return page + ((static_cast<size_t>(kv.layer) * 2 + which) * pc + slot % pc) * kv.kv_dim;
}

__global__ void StoreKvKernel(const float* k, const float* v, int64_t ld, int64_t m, KvArgs kv) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * kv.kv_dim) return;
  const int64_t i = idx / kv.kv_dim;
  const int e = static_cast<int>(idx % kv.kv_dim);
  const KvRowInfo row = kv.rows[i];
  CellPtr(kv, row, row.slot, 0)[e] = ToHalf(k[i * ld + e]);
  CellPtr(kv, row, row.slot, 1)[e] = ToHalf(v[i * ld + e]);
}

// Attention: one block of 128 threads per (row, query head), online softmax over the row's visible
// cells in chunks of 128 in list order.
//   scores: thread t takes cell base + t, a sequential dot over head_dim, times scale;
//   chunk max (exact), p = exp(s - max), chunk sum = 4 warp butterflies added in warp order;
//   values: G = 128 / head_dim groups (1 when head_dim > 128); group g accumulates cells
//   g, g + G, ... of each chunk for its dims, rescaled by exp(old max - new max) per chunk;
//   at the end the groups are added in group order and scaled by 1 / (sum of p).
// Everything depends only on the number of visible cells and head_dim.
constexpr int kAttnThreads = 128;
constexpr int kMaxHeadDim = 256;

__global__ void __launch_bounds__(kAttnThreads) AttentionKernel(const float* q,
                                                                int64_t ldq,
                                                                int n_head,
                                                                int n_head_kv,
                                                                int head_dim,
                                                                float scale,
                                                                KvArgs kv,
                                                                float* out,
                                                                int64_t ldo) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float p[kAttnThreads];
  __shared__ float red_max[kAttnThreads / 32];
  __shared__ float red_sum[kAttnThreads / 32];
  __shared__ float part[kMaxHeadDim];
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int hd = head_dim;
  const int kvh = h / (n_head / n_head_kv);
  const KvRowInfo row = kv.rows[i];
  for (int d = t; d < hd; d += kAttnThreads) qs[d] = q[i * ldq + static_cast<int64_t>(h) * hd + d];
  __syncthreads();

  const int n = row.vis_count;
  const int32_t* vis = kv.visible + row.vis_offset;
  const int pc = row.page_cells;
  uint16_t* const* pages = kv.pages + row.table_offset;
  const size_t k_off = static_cast<size_t>(kv.layer) * 2 * pc * kv.kv_dim + kvh * hd;
  const size_t v_off = (static_cast<size_t>(kv.layer) * 2 + 1) * pc * kv.kv_dim + kvh * hd;
  const int groups = hd <= kAttnThreads ? kAttnThreads / hd : 1;
  const int g = hd <= kAttnThreads ? t / hd : 0;
  const int d0 = hd <= kAttnThreads ? t % hd : t;
  const bool active = g < groups && d0 < hd;
  const bool second = hd > kAttnThreads && d0 + kAttnThreads < hd;  // a second dim per thread

  float acc0 = 0.0f, acc1 = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;
  for (int base = 0; base < n; base += kAttnThreads) {
    const int cnt = min(kAttnThreads, n - base);
    float s = -INFINITY;
    if (t < cnt) {
      const int32_t slot = vis[base + t];
      const uint16_t* kp = pages[slot / pc] + k_off + static_cast<size_t>(slot % pc) * kv.kv_dim;
      float dot = 0.0f;
      if (hd % 8 == 0) {
        for (int d = 0; d < hd; d += 8) {
          const uint4 raw = *reinterpret_cast<const uint4*>(kp + d);
          const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            dot = __fmaf_rn(qs[d + 2 * e], Half(u[e] & 0xFFFF), dot);
            dot = __fmaf_rn(qs[d + 2 * e + 1], Half(u[e] >> 16), dot);
          }
        }
      } else {
        for (int d = 0; d < hd; ++d) dot = __fmaf_rn(qs[d], Half(kp[d]), dot);
      }
      s = __fmul_rn(dot, scale);
    }
    float mx = s;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    if (lane == 0) red_max[warp] = mx;
    __syncthreads();
    float cmax = red_max[0];
#pragma unroll
    for (int w = 1; w < kAttnThreads / 32; ++w) cmax = fmaxf(cmax, red_max[w]);
    const float m_new = fmaxf(m_run, cmax);
    const float alpha = expf(__fsub_rn(m_run, m_new));
    const float pt = t < cnt ? expf(__fsub_rn(s, m_new)) : 0.0f;
    p[t] = pt;
    float ps = pt;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ps = __fadd_rn(ps, __shfl_xor_sync(kFull, ps, off));
    if (lane == 0) red_sum[warp] = ps;
    __syncthreads();
    float csum = red_sum[0];
#pragma unroll
    for (int w = 1; w < kAttnThreads / 32; ++w) csum = __fadd_rn(csum, red_sum[w]);
    l_run = __fadd_rn(__fmul_rn(l_run, alpha), csum);
    if (active) {
      acc0 = __fmul_rn(acc0, alpha);
      acc1 = __fmul_rn(acc1, alpha);
      for (int j = g; j < cnt; j += groups) {
        const int32_t slot = vis[base + j];
        const uint16_t* vp = pages[slot / pc] + v_off + static_cast<size_t>(slot % pc) * kv.kv_dim;
        acc0 = __fmaf_rn(p[j], Half(vp[d0]), acc0);
        if (second) acc1 = __fmaf_rn(p[j], Half(vp[d0 + kAttnThreads]), acc1);
      }
    }
    m_run = m_new;
    __syncthreads();
  }
  if (active) {
    part[g * hd + d0] = acc0;
    if (second) part[d0 + kAttnThreads] = acc1;
  }
  __syncthreads();
  const float inv = n > 0 ? __fdiv_rn(1.0f, l_run) : 0.0f;
  float* o = out + i * ldo + static_cast<int64_t>(h) * hd;
  for (int d = t; d < hd; d += kAttnThreads) {
    float v = part[d];
    for (int gg = 1; gg < groups; ++gg) v = __fadd_rn(v, part[gg * hd + d]);
    o[d] = n > 0 ? __fmul_rn(v, inv) : 0.0f;
  }
}

}  // namespace

void invokeRmsNorm(const float* x,
                   const float* weight,
                   int64_t m,
                   int64_t n,
                   float eps,
                   float* out,
                   cudaStream_t stream) {
  if (m <= 0) return;
  RmsNormKernel<<<static_cast<unsigned>(m), kNormThreads, 0, stream>>>(x, weight, n, eps, out);
}

void invokeRope(float* x,
                int64_t ldx,
                const int32_t* positions,
                int64_t m,
                int n_heads,
                int head_dim,
                int rot_dim,
                float theta_scale,
                float freq_scale,
                bool neox,
                cudaStream_t stream) {
  const int half = rot_dim / 2;
  if (m <= 0 || half <= 0) return;
  RopeKernel<<<Blocks(m * half, 128), 128, 0, stream>>>(
      x, ldx, positions, m, n_heads, head_dim, half, theta_scale, freq_scale, neox);
}

void invokeSwiGlu(const float* gate,
                  const float* up,
                  int64_t ldi,
                  int64_t m,
                  int64_t n,
                  float* out,
                  int64_t ldo,
                  cudaStream_t stream) {
  if (m * n <= 0) return;
  SwiGluKernel<<<Blocks(m * n, 256), 256, 0, stream>>>(gate, up, ldi, m, n, out, ldo);
}

void invokeAdd(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  AddKernel<<<Blocks(n, 256), 256, 0, stream>>>(dst, src, n);
}

void invokeSumParts(
    const float* in, int parts, int64_t count, float* out, bool accumulate, cudaStream_t stream) {
  if (count <= 0) return;
  SumPartsKernel<<<Blocks(count, 256), 256, 0, stream>>>(in, parts, count, out, accumulate);
}

void invokeF32ToF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  F32ToF16Kernel<<<Blocks(n, 256), 256, 0, stream>>>(src, dst, n);
}

void invokeF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  F16ToF32Kernel<<<Blocks(n, 256), 256, 0, stream>>>(src, dst, n);
}

void invokeStoreKv(
    const float* k, const float* v, int64_t ld, int64_t m, const KvArgs& kv, cudaStream_t stream) {
  if (m <= 0) return;
  StoreKvKernel<<<Blocks(m * kv.kv_dim, 256), 256, 0, stream>>>(k, v, ld, m, kv);
}

void invokeAttention(const float* q,
                     int64_t ldq,
                     int64_t m,
                     int n_head,
                     int n_head_kv,
                     int head_dim,
                     float scale,
                     const KvArgs& kv,
                     float* out,
                     int64_t ldo,
                     cudaStream_t stream) {
  if (m <= 0) return;
  const dim3 grid(static_cast<unsigned>(m), static_cast<unsigned>(n_head));
  AttentionKernel<<<grid, kAttnThreads, 0, stream>>>(
      q, ldq, n_head, n_head_kv, head_dim, scale, kv, out, ldo);
}

}  // namespace strata::kernels::cuda
