// CPU operators used by the forward pass. Every op is batch-invariant: the arithmetic that
// produces one output element (its reduction order included) is the same whatever the number of
// rows in the call, the thread count, or the other rows present. That is what lets a model split
// over many nodes, or batched across sessions, give bit-identical logits.
//
// Each op picks its implementation once per process (AVX2+FMA+F16C when the CPU has them, scalar
// otherwise; see ActiveIsa()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "common/thread_pool.h"
#include "kernels/tensor.h"

namespace strata::kernels {

// Name of the instruction set the fast kernels dispatched to: "avx2" or "scalar".
std::string_view ActiveIsa();
// Forces the scalar kernels (tests compare both paths); call before any op runs.
void ForceScalarKernels(bool force);

// Reusable scratch memory for MatMul (quantized activations). One per calling thread; grows once
// to the largest batch, so steady-state decoding allocates nothing.
struct MatMulScratch {
  Buffer activations;
};

// y[i, j] = sum_k w[j, k] * x[i, k] for i < m, j < w.rows().
//   w: weights, shape {n, k}, any supported dtype, rows contiguous, k a multiple of the block size.
//   x: m rows of k f32 values, row stride k.   y: m rows of n f32 values, row stride n.
// Quantized weights: each x row is quantized per block to the matching activation format
// (Q8_0 / Q8_1 / Q8_K) and the dot product uses integer arithmetic per block, as GGML does.
// F32/F16/BF16 weights: f32 dot products. Work is split over output features across `pool`.
void MatMul(
    const Tensor& w, const float* x, int64_t m, float* y, ThreadPool& pool, MatMulScratch& scratch);

// Several products sharing the activations x, such as the q/k/v projections or gate/up:
// ys[t] = the MatMul of *ws[t] and x, for t < ws.size() <= kMaxMatMulMany. Every ws[t] has k
// columns (dtypes may differ). Bit-identical to separate MatMul calls, but x is quantized once per
// activation format and all the weight rows are split over the pool in a single parallel region,
// which saves the fixed per-call costs that dominate small decode products.
inline constexpr size_t kMaxMatMulMany = 8;
void MatMulMany(std::span<const Tensor* const> ws,
                const float* x,
                int64_t m,
                std::span<float* const> ys,
                ThreadPool& pool,
                MatMulScratch& scratch);

// Reference for tests: the same product computed by dequantizing w with DequantizeRowRef and
// accumulating in double (no activation quantization).
void MatMulRef(const Tensor& w, const float* x, int64_t m, float* y);

// Copies row `index` of w (any dtype) to f32 `out` (w.cols() values): embedding lookup.
void GetRow(const Tensor& w, int64_t index, float* out);

// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight   for m rows of n.
void RmsNorm(const float* x, const float* weight, int64_t m, int64_t n, float eps, float* out);

// Rotary embedding applied in place to `x`, m rows of n_heads * head_dim (heads contiguous).
// positions[i] is the logical position of row i. Only the first `rot_dim` of each head rotate.
//   neox = false: pairs (2i, 2i+1) (GGML mode 0, llama);  neox = true: pairs (i, i + rot_dim/2).
// Angle for pair i at position p: p * freq_scale * base^(-2i / rot_dim).
struct RopeParams {
  int head_dim = 0;
  int rot_dim = 0;
  float base = 10000.0f;
  float freq_scale = 1.0f;  // linear scaling: 1 / factor
  bool neox = false;
};
void Rope(float* x, const int32_t* positions, int64_t m, int n_heads, const RopeParams& params);

// out[i] = silu(gate[i]) * up[i] for n values (silu(x) = x / (1 + exp(-x))).
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);

}  // namespace strata::kernels
