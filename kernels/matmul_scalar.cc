// Portable MatMul kernels: integer dot product per block, f32 accumulation across blocks in block
// order. Activations use the GGML block layouts written by QuantizeRowRef, so the activation
// quantizer here is the reference one by construction.
#include <cstring>

#include "kernels/matmul_internal.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace strata::kernels::internal {
namespace {

float DotQ4_0(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_0*>(xp);
  float sum = 0.0f;
  for (int64_t b = 0; b < k / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += ((w[b].qs[j] & 0x0F) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
    }
    sum += Fp16ToFp32(w[b].d) * Fp16ToFp32(x[b].d) * static_cast<float>(isum);
  }
  return sum;
}

float DotQ4_1(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ4_1*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_1*>(xp);
  float sum = 0.0f;
  for (int64_t b = 0; b < k / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      isum += (w[b].qs[j] & 0x0F) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
    }
    // sum_j (d_w q_j + m_w) d_x x_j = d_w d_x sum(q x) + m_w s_x, with s_x = d_x sum(x).
    sum += Fp16ToFp32(w[b].d) * Fp16ToFp32(x[b].d) * static_cast<float>(isum) +
           Fp16ToFp32(w[b].m) * Fp16ToFp32(x[b].s);
  }
  return sum;
}

float DotQ8_0(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ8_0*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_0*>(xp);
  float sum = 0.0f;
  for (int64_t b = 0; b < k / kQK; ++b) {
    int isum = 0;
    for (int j = 0; j < kQK; ++j) isum += w[b].qs[j] * x[b].qs[j];
    sum += Fp16ToFp32(w[b].d) * Fp16ToFp32(x[b].d) * static_cast<float>(isum);
  }
  return sum;
}

float DotQ4_K(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ4_K*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_K*>(xp);
  float sum = 0.0f, min_sum = 0.0f;
  for (int64_t b = 0; b < k / kQKK; ++b) {
    uint8_t sc[8], mn[8];
    UnpackQ4KScales(w[b].scales, sc, mn);
    int isum = 0, imin = 0;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = w[b].qs + 32 * (j / 2);
      const int8_t* a = x[b].qs + 32 * j;
      int s = 0;
      for (int l = 0; l < 32; ++l) s += ((j & 1) ? (q[l] >> 4) : (q[l] & 0x0F)) * a[l];
      isum += sc[j] * s;
      imin += mn[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
    }
    sum += Fp16ToFp32(w[b].d) * x[b].d * static_cast<float>(isum);
    min_sum += Fp16ToFp32(w[b].dmin) * x[b].d * static_cast<float>(imin);
  }
  return sum - min_sum;
}

float DotQ6_K(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ6_K*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_K*>(xp);
  float sum = 0.0f;
  for (int64_t b = 0; b < k / kQKK; ++b) {
    int isum = 0;
    for (int s = 0; s < 16; ++s) {
      int t = 0;  // codes are stored +32; the offset is removed with the group sum (bsums)
      for (int l = 0; l < 16; ++l) t += Q6KCode(w[b].ql, w[b].qh, 16 * s + l) * x[b].qs[16 * s + l];
      isum += w[b].scales[s] * (t - 32 * x[b].bsums[s]);
    }
    sum += Fp16ToFp32(w[b].d) * x[b].d * static_cast<float>(isum);
  }
  return sum;
}

template <DType T>
float WeightAt(const uint8_t* w, int64_t i) {
  if constexpr (T == DType::kF32) {
    float v;
    std::memcpy(&v, w + 4 * i, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    return T == DType::kF16 ? Fp16ToFp32(h) : Bf16ToFp32(h);
  }
}

template <DType T>
float DotFloat(const uint8_t* w, const uint8_t* xp, int64_t k) {
  const auto* x = reinterpret_cast<const float*>(xp);
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i) sum += WeightAt<T>(w, i) * x[i];
  return sum;
}

template <DType Act>
size_t ActRowBytes(int64_t k) {
  return RowBytes(Act, k);
}
template <DType Act>
void Quantize(const float* x, uint8_t* act, int64_t k) {
  QuantizeRowRef(Act, x, act, k);
}

template <DType Act, float (*Dot)(const uint8_t*, const uint8_t*, int64_t)>
constexpr MatMulKernel Quantized() {
  MatMulKernel kern;
  kern.act_row_bytes = &ActRowBytes<Act>;
  kern.quantize = &Quantize<Act>;
  kern.rows = &RowsLoop<DotTile<Dot>>;
  return kern;
}
template <DType T>
constexpr MatMulKernel Float() {
  MatMulKernel kern;
  kern.rows = &RowsLoop<DotTile<DotFloat<T>>>;
  return kern;
}

constexpr MatMulKernel kQ4_0 = Quantized<DType::kQ8_0, DotQ4_0>();
constexpr MatMulKernel kQ4_1 = Quantized<DType::kQ8_1, DotQ4_1>();
constexpr MatMulKernel kQ8_0 = Quantized<DType::kQ8_0, DotQ8_0>();
constexpr MatMulKernel kQ4_K = Quantized<DType::kQ8_K, DotQ4_K>();
constexpr MatMulKernel kQ6_K = Quantized<DType::kQ8_K, DotQ6_K>();
constexpr MatMulKernel kF32 = Float<DType::kF32>();
constexpr MatMulKernel kF16 = Float<DType::kF16>();
constexpr MatMulKernel kBF16 = Float<DType::kBF16>();

}  // namespace

const MatMulKernel* ScalarKernel(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return &kF32;
    case DType::kF16:
      return &kF16;
    case DType::kBF16:
      return &kBF16;
    case DType::kQ4_0:
      return &kQ4_0;
    case DType::kQ4_1:
      return &kQ4_1;
    case DType::kQ8_0:
      return &kQ8_0;
    case DType::kQ4_K:
      return &kQ4_K;
    case DType::kQ6_K:
      return &kQ6_K;
    default:
      return nullptr;
  }
}

}  // namespace strata::kernels::internal
