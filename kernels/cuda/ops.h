// CUDA operators: validating facades over kernels/cuda/launchers.h. Each checks sizes, strides,
// alignment and pointers, returns INVALID_ARGUMENT before anything is launched when they are
// wrong, then launches on `stream` (asynchronously) and reports a failed launch as INTERNAL.
// All pointers are device pointers.
//
// Numerics against the CPU ops (kernels/ops.h): activation quantization is bit-identical; every
// integer block dot is exact; only the order of float additions and the libm (expf, cosf, sinf)
// differ, so results agree within a small tolerance. Within the CUDA backend every op is
// batch-invariant bit for bit (see launchers.h).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/launchers.h"
#include "kernels/dtype.h"

namespace strata::kernels::cuda {

// The activation format a weight dtype's product reads (kF32 for F32/F16/BF16).
ActFormat ActFormatFor(DType weight);
// True for the weight dtypes the CUDA products support.
bool SupportedWeight(DType dtype);
// INVALID_ARGUMENT unless `k` columns of `dtype` can be a CUDA weight (k > 0 and a multiple of
// 256 for K-quants, 32 otherwise).
absl::Status CheckWeightShape(DType dtype, int64_t k);

// Device bytes of the activations for m rows of k in `format`: codes and meta (0 for kF32).
size_t ActCodeBytes(int64_t m, int64_t k);
size_t ActMetaBytes(int64_t m, int64_t k);

// Quantizes m rows of k f32 values (stride ldx >= k) to `format` (Q8_0, Q8_1 or Q8_K), writing
// q (m x k codes) and meta (m x k/32 pairs); see DeviceActView.
absl::Status QuantizeActivations(ActFormat format,
                                 const float* x,
                                 int64_t ldx,
                                 int64_t m,
                                 int64_t k,
                                 int8_t* q,
                                 float* meta,
                                 cudaStream_t stream);

struct MatMulEpilogue {
  const float* bias = nullptr;  // w.n values added to every row
  bool accumulate = false;      // y = y + (x w^T + bias)
};
// y[i * ldy + j] = dot(w row j, x row i) (+ bias[j]) for i < m, j < w.n; x must be in
// ActFormatFor(w.dtype) with x.k == w.k (f32 rows 16-byte aligned for float weights).
absl::Status MatMul(const DeviceWeightView& w,
                    const DeviceActView& x,
                    int64_t m,
                    float* y,
                    int64_t ldy,
                    const MatMulEpilogue& epilogue,
                    cudaStream_t stream);

// Benchmarking and tests only: MatMul for Q4_0/Q4_1 weights through decode-product variant
// `variant` (0 .. GemvVariantCount() - 1, named by GemvVariantName; launchers.h), launched once
// per activation row. Every variant gives MatMul's results bit for bit, at any m; MatMul itself
// uses kDefaultGemvVariant for m = 1. INVALID_ARGUMENT as MatMul, or for another dtype or id.
absl::Status MatMulGemvVariant(const DeviceWeightView& w,
                               const DeviceActView& x,
                               int64_t m,
                               float* y,
                               int64_t ldy,
                               const MatMulEpilogue& epilogue,
                               int variant,
                               cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * weight, m rows of n (contiguous).
absl::Status RmsNorm(const float* x,
                     const float* weight,
                     int64_t m,
                     int64_t n,
                     float eps,
                     float* out,
                     cudaStream_t stream);

// kernels::Rope in place on m rows of stride ldx holding n_heads heads of head_dim.
struct RopeArgs {
  int head_dim = 0;
  int rot_dim = 0;
  float base = 10000.0f;
  float freq_scale = 1.0f;
  bool neox = false;
};
absl::Status Rope(float* x,
                  int64_t ldx,
                  const int32_t* positions,
                  int64_t m,
                  int n_heads,
                  const RopeArgs& args,
                  cudaStream_t stream);

// out[i, j] = silu(gate[i, j]) * up[i, j]; inputs of row stride ldi, output of stride ldo.
absl::Status SwiGlu(const float* gate,
                    const float* up,
                    int64_t ldi,
                    int64_t m,
                    int64_t n,
                    float* out,
                    int64_t ldo,
                    cudaStream_t stream);

// dst += src (n values).
absl::Status Add(float* dst, const float* src, int64_t n, cudaStream_t stream);
// out (+)= in[0] + in[1] + ... + in[parts - 1] (each `count` floats, consecutive), in that order.
absl::Status SumParts(
    const float* in, int parts, int64_t count, float* out, bool accumulate, cudaStream_t stream);

// f32 <-> f16 (round to nearest even, as kernels::Fp32ToFp16).
absl::Status ConvertF32ToF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream);
absl::Status ConvertF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream);

// Stores each row's K and V (rows of stride ld) as f16 in its cell for layer kv.layer.
absl::Status StoreKv(
    const float* k, const float* v, int64_t ld, int64_t m, const KvArgs& kv, cudaStream_t stream);

// Attention of m rows over their visible cells (kv.rows[i]): q and out rows hold n_head heads of
// head_dim (<= 256) at strides ldq / ldo; scale is usually 1 / sqrt(head_dim).
struct AttentionArgs {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.0f;
};
absl::Status Attention(const float* q,
                       int64_t ldq,
                       int64_t m,
                       const AttentionArgs& args,
                       const KvArgs& kv,
                       float* out,
                       int64_t ldo,
                       cudaStream_t stream);

}  // namespace strata::kernels::cuda
