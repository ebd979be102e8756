// Activation quantization and the weight x activation products (decode GEMV and batched GEMM are
// the same kernel at different tile sizes).
//
// Batch invariance: one output element y[i, j] is the butterfly sum, over the 32 lanes of a warp,
// of per-lane partials; lane l adds the contributions of chunks l, l + 32, l + 64, ... of the row,
// in that order; each chunk's contribution is an exact integer dot product (dp4a over the codes)
// scaled by float block scales in a fixed expression. None of that depends on how many weight rows
// a warp holds (RPW), how many activation rows a block sweeps (NR) or how many chunks are loaded
// ahead (U), so y[i, j] is bit-identical for m = 1 and for any batch.
//
// The decode kernels for Q4_0/Q4_1 (GemvKernel, below) keep that order exactly: lane l of the
// warp owning a row still adds chunks l, l + 32, ... in increasing order, starting from 0, and
// the same butterfly and epilogue follow. They only map rows to warps and schedule the loads
// differently, so they too agree bit for bit with the batched path, and with the CPU within the
// tolerance the tests already hold it to.
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
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

// ---------------------------------------------------------------------------------------------
// Decode GEMV (one activation row) for Q4_0 / Q4_1 weights.
//
// Warp w of the grid owns row groups g = w, w + (warps in the grid), ... (RPW rows each); a
// row group is swept in chunk groups of 32 * U chunks, and the codes and scale bits of the next
// (row group, chunk group) are loaded before the current one is computed, so each lane keeps
// U * RPW 16-byte loads in flight at all times, across row boundaries too. The activation row is
// read from global memory (L1), or staged once per block in shared memory as three arrays
// (codes 0-15 of every chunk, codes 16-31, meta) so each lane's 16-byte reads are conflict-free.
// Weights are read with L1::no_allocate: they are used once and would evict the activations.

struct GemvRaw {
  int4 q;      // the chunk's 32 codes
  uint32_t s;  // its scale bits (Traits<T>::kScaleBytes of them)
};

__device__ __forceinline__ int4 LdStream16(const uint8_t* ptr) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}
template <int kBytes>
__device__ __forceinline__ uint32_t LdStreamScale(const uint8_t* ptr) {
  if constexpr (kBytes == 2) {
    unsigned short v;
    asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(v) : "l"(ptr));
    return v;
  } else {
    uint32_t v;
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(ptr));
    return v;
  }
}

// Programmatic dependent launch (sm_90): let the next launch in the stream start early, and wait
// for the previous one to finish (and its writes to be visible) before touching x, bias or y.
// Both are no-ops when the launch did not ask for it.
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void WaitForPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <DType T, int RPW, int U>
__device__ __forceinline__ void GemvLoad(
    const DeviceWeightView& w, int64_t g, int64_t cg, int lane, GemvRaw (&r)[U][RPW]) {
  constexpr int kSb = Traits<T>::kScaleBytes;
  const int64_t chunks = w.k / 32;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = cg * 32 * U + 32 * u + lane;
    if (c < chunks) {
#pragma unroll
      for (int a = 0; a < RPW; ++a) {
        const int64_t row = min(g * RPW + a, w.n - 1);
        r[u][a].q = LdStream16(w.q + row * (w.k / 2) + c * 16);
        r[u][a].s = LdStreamScale<kSb>(w.d + (row * chunks + c) * kSb);
      }
    }
  }
}

// The butterfly and epilogue of MatMulKernel (NR = 1), for the RPW rows of group g.
template <int RPW>
__device__ __forceinline__ void GemvStore(const MatMulParams& p,
                                          int64_t g,
                                          const float (&acc)[RPW],
                                          int lane) {
#pragma unroll
  for (int a = 0; a < RPW; ++a) {
    float v = acc[a];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFull, v, off));
    const int64_t j = g * RPW + a;
    if (lane == (a & 31) && j < p.w.n) {
      float out = v;
      if (p.bias != nullptr) out = __fadd_rn(out, p.bias[j]);
      float* dst = p.y + j;
      if (p.accumulate) out = __fadd_rn(*dst, out);
      *dst = out;
    }
  }
}

template <DType T, int RPW, int U, int WPB, bool kSmemX>
__global__ void __launch_bounds__(32 * WPB) GemvKernel(const MatMulParams p, const bool pdl) {
  using Tr = Traits<T>;
  extern __shared__ int4 xs[];  // kSmemX: lo[chunks], hi[chunks], then float2 meta[chunks]
  const int lane = threadIdx.x & 31;
  const int64_t chunks = p.w.k / 32;
  const int64_t groups = (p.w.n + RPW - 1) / RPW;
  const int64_t cgroups = (chunks + 32 * U - 1) / (32 * U);
  const int64_t step = static_cast<int64_t>(gridDim.x) * WPB;
  int64_t g = static_cast<int64_t>(blockIdx.x) * WPB + (threadIdx.x >> 5);
  int64_t cg = 0;
  GemvRaw cur[U][RPW], nxt[U][RPW];
  if (pdl) AllowDependents();
  // The weights do not depend on earlier launches: start reading them before waiting.
  if (g < groups) GemvLoad<T, RPW, U>(p.w, g, cg, lane, cur);
  if (pdl) WaitForPrerequisites();
  const int4* lo = xs;
  const int4* hi = xs + chunks;
  const float2* meta = reinterpret_cast<const float2*>(xs + 2 * chunks);
  if constexpr (kSmemX) {
    const int4* src = reinterpret_cast<const int4*>(p.x.q);
    for (int64_t i = threadIdx.x; i < 2 * chunks; i += blockDim.x) {
      xs[(i & 1) * chunks + (i >> 1)] = src[i];
    }
    const float2* msrc = reinterpret_cast<const float2*>(p.x.meta);
    float2* mdst = reinterpret_cast<float2*>(xs + 2 * chunks);
    for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) mdst[i] = msrc[i];
    __syncthreads();
  }
  float acc[RPW];
#pragma unroll
  for (int a = 0; a < RPW; ++a) acc[a] = 0.0f;
  while (g < groups) {
    int64_t g2 = g, cg2 = cg + 1;
    if (cg2 == cgroups) {
      cg2 = 0;
      g2 += step;
    }
    if (g2 < groups) GemvLoad<T, RPW, U>(p.w, g2, cg2, lane, nxt);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = cg * 32 * U + 32 * u + lane;
      if (c < chunks) {
        typename Tr::X xd;
        if constexpr (kSmemX) {
          const float2 m = meta[c];
          xd = typename Tr::X{lo[c], hi[c], m.x, m.y};
        } else {
          xd = Tr::LoadX(p.x, 0, c);
        }
#pragma unroll
        for (int a = 0; a < RPW; ++a) {
          acc[a] = __fadd_rn(acc[a], Tr::Dot(Tr::Make(cur[u][a].q, cur[u][a].s), xd));
        }
      }
    }
    if (cg2 == 0) {  // the group's last chunks were just added
      GemvStore<RPW>(p, g, acc, lane);
#pragma unroll
      for (int a = 0; a < RPW; ++a) acc[a] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int a = 0; a < RPW; ++a) cur[u][a] = nxt[u][a];
    }
    g = g2;
    cg = cg2;
  }
}

// Per device (cached): SM count and whether programmatic dependent launch is available.
struct GemvDevice {
  int sms = 0;
  bool pdl = false;
};
GemvDevice CurrentGemvDevice() {
  static GemvDevice cache[16];
  int dev = 0;
  cudaGetDevice(&dev);
  GemvDevice& d = cache[dev & 15];
  if (d.sms == 0) {
    int sms = 0, major = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    d.pdl = major >= 9;
    d.sms = std::max(sms, 1);
  }
  return d;
}

// blocks_per_sm = 0: one row group per warp (the grid covers the matrix); otherwise persistent
// warps, at most blocks_per_sm blocks per SM (and no more than fit).
template <DType T, int RPW, int U, int WPB, bool kSmemX>
void LaunchGemv(const MatMulParams& p, int blocks_per_sm, bool pdl, cudaStream_t stream) {
  const auto kernel = GemvKernel<T, RPW, U, WPB, kSmemX>;
  const size_t smem = kSmemX ? static_cast<size_t>(p.w.k / 32) * 40 : 0;
  if (smem > 48 * 1024) return Launch<T, 1, 1, 4>(p, stream);  // same sums, no staging
  const int64_t groups = (p.w.n + RPW - 1) / RPW;
  int64_t blocks = (groups + WPB - 1) / WPB;
  const GemvDevice dev = CurrentGemvDevice();
  if (blocks_per_sm > 0) {
    // Blocks that fit on one SM, cached per 4 KiB step of staging (measured at the step's top).
    static std::atomic<int> fit[13];
    const size_t bucket = (smem + 4095) / 4096;
    int occ = fit[bucket].load(std::memory_order_relaxed);
    if (occ == 0) {
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, 32 * WPB, bucket * 4096);
      occ = std::max(occ, 1);
      fit[bucket].store(occ, std::memory_order_relaxed);
    }
    blocks = std::min<int64_t>(blocks, int64_t{dev.sms} * std::min(occ, blocks_per_sm));
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(32 * WPB);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  // Only on an explicit stream: the legacy default stream keeps plain serialization.
  const bool use_pdl = pdl && dev.pdl && stream != nullptr;
  cfg.attrs = attr;
  cfg.numAttrs = use_pdl ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, p, use_pdl);
}

using GemvLauncher = void (*)(const MatMulParams&, cudaStream_t);
struct GemvVariant {
  const char* name;
  GemvLauncher q4_0, q4_1;
};

template <DType T, int RPW, int U, int WPB, bool kSmemX, int kBlocksPerSm, bool kPdl>
void RunGemv(const MatMulParams& p, cudaStream_t stream) {
  LaunchGemv<T, RPW, U, WPB, kSmemX>(p, kBlocksPerSm, kPdl, stream);
}
template <DType T>
void RunBase(const MatMulParams& p, cudaStream_t stream) {
  Launch<T, 1, 1, 4>(p, stream);
}
template <int RPW, int U, int WPB, bool kSmemX, int kBlocksPerSm, bool kPdl>
constexpr GemvVariant V(const char* name) {
  return {name,
          RunGemv<DType::kQ4_0, RPW, U, WPB, kSmemX, kBlocksPerSm, kPdl>,
          RunGemv<DType::kQ4_1, RPW, U, WPB, kSmemX, kBlocksPerSm, kPdl>};
}
constexpr int kOcc = 64;  // persistent, as many blocks per SM as fit

// Names: r<rows per warp> u<chunks per lane per load round> w<warps per block>, gx / sx
// (activations from global memory / staged in shared memory), grid (one row group per warp) /
// p<N> (persistent, at most N blocks per SM) / pocc (persistent, as many as fit), pdl.
constexpr GemvVariant kGemvVariants[] = {
    {"base", RunBase<DType::kQ4_0>, RunBase<DType::kQ4_1>},  // MatMulKernel<T, 1, 1, 4>
    V<1, 4, 4, false, 0, false>("r1u4w4-gx-grid"),
    V<2, 4, 4, false, 0, false>("r2u4w4-gx-grid"),
    V<4, 2, 4, false, 0, false>("r4u2w4-gx-grid"),
    V<2, 4, 8, true, 0, false>("r2u4w8-sx-grid"),
    V<1, 4, 8, true, kOcc, false>("r1u4w8-sx-pocc"),
    V<2, 4, 8, true, kOcc, false>("r2u4w8-sx-pocc"),
    V<2, 2, 8, true, kOcc, false>("r2u2w8-sx-pocc"),
    V<4, 2, 8, true, kOcc, false>("r4u2w8-sx-pocc"),
    V<2, 4, 8, true, 2, false>("r2u4w8-sx-p2"),
    V<1, 4, 4, false, 0, true>("r1u4w4-gx-grid-pdl"),
    V<2, 4, 8, true, kOcc, true>("r2u4w8-sx-pocc-pdl"),
    V<4, 2, 8, true, kOcc, true>("r4u2w8-sx-pocc-pdl"),
    V<1, 4, 8, true, 0, false>("r1u4w8-sx-grid"),
    V<1, 4, 8, true, kOcc, true>("r1u4w8-sx-pocc-pdl"),
};
constexpr int kNumGemvVariants = static_cast<int>(sizeof(kGemvVariants) / sizeof(kGemvVariants[0]));

// The production decode variant for Q4_0/Q4_1 (an index into kGemvVariants; see GemvVariantName;
// 0 restores the previous kernel). Measured on an H200 over the five Llama-7B shapes
// (strata-gpu-bench --gemv-variants, BENCHMARKS.md): two rows per warp, persistent warps that
// prefetch across row groups, activations staged once per block, and programmatic dependent
// launch so the weights stream in while the previous kernel drains — best or within 1% of the
// best on every shape but 4096x11008 (where it leads by 9 points).
constexpr int kDefaultGemv = 11;  // r2u4w8-sx-pocc-pdl
static_assert(kDefaultGemv >= 0 && kDefaultGemv < kNumGemvVariants);

// Tile shapes by batch size: decode reads every weight once with deep prefetch; larger batches
// keep more weight rows and activation rows in registers for reuse.
template <DType T>
void LaunchFor(const MatMulParams& p, cudaStream_t stream) {
  if constexpr (T == DType::kQ4_0 || T == DType::kQ4_1) {
    if (p.m == 1) {
      const GemvVariant& v = kGemvVariants[kDefaultGemv];
      return (T == DType::kQ4_0 ? v.q4_0 : v.q4_1)(p, stream);
    }
  }
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

const int kDefaultGemvVariant = kDefaultGemv;

int GemvVariantCount() { return kNumGemvVariants; }

const char* GemvVariantName(int variant) {
  return variant >= 0 && variant < kNumGemvVariants ? kGemvVariants[variant].name : "";
}

void invokeMatMulGemvVariant(const DeviceWeightView& w,
                             const DeviceActView& x,
                             int64_t m,
                             float* y,
                             int64_t ldy,
                             const float* bias,
                             bool accumulate,
                             int variant,
                             cudaStream_t stream) {
  if (variant < 0 || variant >= kNumGemvVariants) return;
  const GemvVariant& v = kGemvVariants[variant];
  const GemvLauncher run = w.dtype == DType::kQ4_0 ? v.q4_0 : v.q4_1;
  for (int64_t i = 0; i < m; ++i) {
    DeviceActView xi = x;
    xi.q = x.q + i * x.k;
    xi.meta = x.meta + i * (x.k / 16);
    run({w, xi, 1, y + i * ldy, ldy, bias, accumulate}, stream);
  }
}

}  // namespace strata::kernels::cuda
