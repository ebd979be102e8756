// Raw CUDA launchers (FasterTransformer's invokeX seam): device pointers, sizes and an explicit
// stream, no validation. They are compiled by nvcc (matmul.cu, ops.cu) and called only through
// the validating facades in kernels/cuda/ops.h, which check shapes before launching.
//
// Arithmetic contract shared by every kernel here: the operations producing one output element,
// and their order, depend only on that element's inputs and on sizes fixed by the model (k,
// head_dim, the number of visible cells), never on the number of rows in the launch or on which
// block computed it. The kernels are compiled with --fmad=false so nothing is contracted behind
// our back. That makes every op batch-invariant, bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace strata::kernels::cuda {

// How activations are handed to a product. Quantized weights take the CPU path's activation
// formats (Q8_0 for Q4_0/Q8_0, Q8_1 for Q4_1, Q8_K for Q4_K/Q6_K), quantized on the device with
// the same arithmetic as QuantizeRowRef; float weights read f32 activations.
enum class ActFormat : int { kF32 = 0, kQ8_0 = 1, kQ8_1 = 2, kQ8_K = 3 };
inline constexpr int kNumActFormats = 4;

// A weight matrix of n rows (output features) by k columns, repacked for the device from GGML
// blocks (same quantization, a layout with 16-byte aligned code runs). Three arrays, each row-major
// with rows concatenated (so stacking matrices of one dtype stacks their rows):
//   dtype  q (per row)                 s (per row)               d (per row)
//   Q4_0   k/2 bytes: block codes      -                         k/32 fp16 scales
//   Q4_1   k/2 bytes                   -                         k/32 (fp16 d, fp16 m) pairs
//   Q8_0   k int8 codes                -                         k/32 fp16 scales
//   Q4_K   k/2 bytes (GGML qs order)   k/256 x 12 packed scales  k/256 (fp16 d, fp16 dmin)
//   Q6_K   k/256 x (128 ql + 64 qh)    k/256 x 16 int8 scales    k/256 fp16 scales
//   F16, BF16, F32: q holds the k values; s and d are unused.
struct DeviceWeightView {
  DType dtype = DType::kF32;
  int64_t n = 0;
  int64_t k = 0;
  const uint8_t* q = nullptr;
  const uint8_t* s = nullptr;
  const uint8_t* d = nullptr;
};

// Bytes per row of each array above (0 when unused). `k` must suit the dtype (see ops.h).
struct WeightRowBytes {
  size_t q = 0, s = 0, d = 0;
};
WeightRowBytes DeviceRowBytes(DType dtype, int64_t k);

// Activations of m rows by k columns in one format.
//   kF32: f, row stride ldf floats.
//   quantized: q (int8 codes, row stride k) and meta (2 floats per 32 columns, row stride k/16):
//     Q8_0: (fp16-rounded d, sum of the 32 codes)      Q8_1: (fp16-rounded d, fp16-rounded d*sum)
//     Q8_K: (the f32 d of the 256-block, sum of the 32 codes)
struct DeviceActView {
  ActFormat format = ActFormat::kF32;
  int64_t k = 0;
  const float* f = nullptr;
  int64_t ldf = 0;
  const int8_t* q = nullptr;
  const float* meta = nullptr;
};

// Per batch row: where its KV cell lives and which cells it attends to. Cell `slot` of the row's
// session is in page pages[table_offset + slot / page_cells]; inside the page the layout is
// KvCache's: [layer][K|V][cell in page][kv_dim] f16.
struct KvRowInfo {
  int32_t slot = 0;          // the row's own cell
  int32_t vis_offset = 0;    // its visible slots: visible[vis_offset, vis_offset + vis_count)
  int32_t vis_count = 0;     // in (position, sequence set, slot) order
  int32_t table_offset = 0;  // its session's first page in `pages`
  int32_t page_cells = 0;
};
struct KvArgs {
  const KvRowInfo* rows = nullptr;   // device, one per batch row
  const int32_t* visible = nullptr;  // device
  uint16_t* const* pages = nullptr;  // device array of device page pointers
  int layer = 0;                     // layer index inside the span
  int kv_dim = 0;                    // n_head_kv * head_dim
};

// --- matmul.cu ---

// Quantizes m rows of k f32 values (row stride ldx) into `q` (m x k) and `meta` (m x k/16).
void invokeQuantizeActivations(ActFormat format,
                               const float* x,
                               int64_t ldx,
                               int64_t m,
                               int64_t k,
                               int8_t* q,
                               float* meta,
                               cudaStream_t stream);

// y[i * ldy + j] = dot(w row j, x row i) for i < m, j < w.n, then `+ bias[j]` when bias is given,
// then `y_old + result` when accumulate is set.
void invokeMatMul(const DeviceWeightView& w,
                  const DeviceActView& x,
                  int64_t m,
                  float* y,
                  int64_t ldy,
                  const float* bias,
                  bool accumulate,
                  cudaStream_t stream);

// Decode-product variants for Q4_0 and Q4_1 weights (benchmarking and tests; production uses
// variant kDefaultGemvVariant for m = 1). They differ only in how work is mapped to threads (rows
// per warp, chunks loaded per lane before computing, warps per block, activations from global or
// shared memory, a grid covering every row or persistent warps, programmatic dependent launch);
// every variant adds the same per-element terms in the same order as invokeMatMul, so all of
// them, at any m, are bit-identical to it. Ids 0 .. GemvVariantCount() - 1.
int GemvVariantCount();
const char* GemvVariantName(int variant);
extern const int kDefaultGemvVariant;
// As invokeMatMul for Q4_0/Q4_1 weights, with the decode kernel of `variant` run once per row.
void invokeMatMulGemvVariant(const DeviceWeightView& w,
                             const DeviceActView& x,
                             int64_t m,
                             float* y,
                             int64_t ldy,
                             const float* bias,
                             bool accumulate,
                             int variant,
                             cudaStream_t stream);

// --- ops.cu ---

void invokeRmsNorm(const float* x,
                   const float* weight,
                   int64_t m,
                   int64_t n,
                   float eps,
                   float* out,
                   cudaStream_t stream);

// In place on m rows (stride ldx) of n_heads heads of head_dim; pairs as kernels::Rope.
// theta_scale = base^(-2 / rot_dim), computed by the caller as the CPU does.
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
                cudaStream_t stream);

// out[i * ldo + j] = silu(gate[i * ldi + j]) * up[i * ldi + j] for j < n.
void invokeSwiGlu(const float* gate,
                  const float* up,
                  int64_t ldi,
                  int64_t m,
                  int64_t n,
                  float* out,
                  int64_t ldo,
                  cudaStream_t stream);

// dst[i] = dst[i] + src[i].
void invokeAdd(float* dst, const float* src, int64_t n, cudaStream_t stream);

// out[i] = (out[i] +) sum over r < parts of in[r * count + i], added in rank order.
void invokeSumParts(
    const float* in, int parts, int64_t count, float* out, bool accumulate, cudaStream_t stream);

void invokeF32ToF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream);
void invokeF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream);

// Writes each row's key and value (kv_dim f32 each, rows of stride ld) as f16 into its cell.
void invokeStoreKv(
    const float* k, const float* v, int64_t ld, int64_t m, const KvArgs& kv, cudaStream_t stream);

// out[i, h] = softmax(scale * q[i, h] . K) V over row i's visible cells, for every query head h
// (kv head h / (n_head / n_head_kv)). q rows of stride ldq, out rows of stride ldo.
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
                     cudaStream_t stream);

}  // namespace strata::kernels::cuda
