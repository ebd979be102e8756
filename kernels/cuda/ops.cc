#include "kernels/cuda/ops.h"

#include <cmath>

#include "common/strings.h"
#include "kernels/cuda/device.h"

namespace strata::kernels::cuda {
namespace {

absl::Status Bad(std::string_view op, std::string_view why) {
  return absl::InvalidArgumentError(StrCat("cuda::", op, ": ", why));
}

absl::Status Launched(std::string_view op) { return CudaStatus(cudaGetLastError(), op); }

bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

ActFormat ActFormatFor(DType weight) {
  switch (weight) {
    case DType::kQ4_0:
    case DType::kQ8_0:
      return ActFormat::kQ8_0;
    case DType::kQ4_1:
      return ActFormat::kQ8_1;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return ActFormat::kQ8_K;
    default:
      return ActFormat::kF32;
  }
}

bool SupportedWeight(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
    case DType::kQ4_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

absl::Status CheckWeightShape(DType dtype, int64_t k) {
  if (!SupportedWeight(dtype)) {
    return Bad("MatMul", StrCat("weight dtype ", Info(dtype).name, " is not supported"));
  }
  const int64_t multiple = (dtype == DType::kQ4_K || dtype == DType::kQ6_K) ? 256 : 32;
  if (k <= 0 || k % multiple != 0) {
    return Bad("MatMul",
               StrCat(Info(dtype).name,
                      " weights need a row length that is a positive "
                      "multiple of ",
                      multiple,
                      ", got ",
                      k));
  }
  return absl::OkStatus();
}

size_t ActCodeBytes(int64_t m, int64_t k) { return static_cast<size_t>(m * k); }
size_t ActMetaBytes(int64_t m, int64_t k) {
  return static_cast<size_t>(m * (k / 32)) * 2 * sizeof(float);
}

absl::Status QuantizeActivations(ActFormat format,
                                 const float* x,
                                 int64_t ldx,
                                 int64_t m,
                                 int64_t k,
                                 int8_t* q,
                                 float* meta,
                                 cudaStream_t stream) {
  if (format == ActFormat::kF32) return Bad("QuantizeActivations", "f32 is not a quantized format");
  const int64_t block = format == ActFormat::kQ8_K ? 256 : 32;
  if (m < 0 || k <= 0 || k % block != 0 || ldx < k) {
    return Bad("QuantizeActivations", StrCat("bad shape m=", m, " k=", k, " ldx=", ldx));
  }
  if (m == 0) return absl::OkStatus();
  if (x == nullptr || q == nullptr || meta == nullptr) {
    return Bad("QuantizeActivations", "null pointer");
  }
  if (format == ActFormat::kQ8_K && !Aligned(q, 8)) {
    return Bad("QuantizeActivations", "codes must be 8-byte aligned");
  }
  invokeQuantizeActivations(format, x, ldx, m, k, q, meta, stream);
  return Launched("QuantizeActivations");
}

absl::Status MatMul(const DeviceWeightView& w,
                    const DeviceActView& x,
                    int64_t m,
                    float* y,
                    int64_t ldy,
                    const MatMulEpilogue& epilogue,
                    cudaStream_t stream) {
  RETURN_IF_ERROR(CheckWeightShape(w.dtype, w.k));
  if (w.n <= 0 || w.q == nullptr) return Bad("MatMul", "empty weight");
  if (w.n > int64_t{65535} * 4) return Bad("MatMul", StrCat(w.n, " rows (at most 262140)"));
  const bool kquant = w.dtype == DType::kQ4_K || w.dtype == DType::kQ6_K;
  if (kquant && (w.s == nullptr || w.d == nullptr)) return Bad("MatMul", "missing K-quant scales");
  if (SupportedWeight(w.dtype) && Info(w.dtype).quantized && w.d == nullptr) {
    return Bad("MatMul", "missing block scales");
  }
  if (!Aligned(w.q, 16)) return Bad("MatMul", "weight codes must be 16-byte aligned");
  if (x.k != w.k) return Bad("MatMul", StrCat("activations have ", x.k, " columns, weights ", w.k));
  if (x.format != ActFormatFor(w.dtype)) {
    return Bad("MatMul",
               StrCat("activation format ",
                      static_cast<int>(x.format),
                      " does not suit ",
                      Info(w.dtype).name,
                      " weights"));
  }
  if (x.format == ActFormat::kF32) {
    if (x.f == nullptr || x.ldf < x.k || x.ldf % 4 != 0 || !Aligned(x.f, 16)) {
      return Bad("MatMul", "f32 activations must be 16-byte aligned rows with a stride >= k");
    }
  } else if (x.q == nullptr || x.meta == nullptr || !Aligned(x.q, 16) || !Aligned(x.meta, 8)) {
    return Bad("MatMul", "quantized activations must be aligned (codes 16 B, meta 8 B)");
  }
  if (m < 0 || (m > 0 && (y == nullptr || ldy < w.n))) {
    return Bad("MatMul", StrCat("bad output: m=", m, " ldy=", ldy, " n=", w.n));
  }
  if (m == 0) return absl::OkStatus();
  invokeMatMul(w, x, m, y, ldy, epilogue.bias, epilogue.accumulate, stream);
  return Launched("MatMul");
}

absl::Status MatMulGemvVariant(const DeviceWeightView& w,
                               const DeviceActView& x,
                               int64_t m,
                               float* y,
                               int64_t ldy,
                               const MatMulEpilogue& epilogue,
                               int variant,
                               cudaStream_t stream) {
  if (w.dtype != DType::kQ4_0 && w.dtype != DType::kQ4_1) {
    return Bad("MatMulGemvVariant", StrCat(Info(w.dtype).name, " weights have no variants"));
  }
  if (variant < 0 || variant >= GemvVariantCount()) {
    return Bad("MatMulGemvVariant", StrCat("no variant ", variant));
  }
  // MatMul with no rows checks the weights and activations and launches nothing.
  RETURN_IF_ERROR(MatMul(w, x, 0, y, ldy, epilogue, stream));
  if (m < 0 || (m > 0 && (y == nullptr || ldy < w.n))) {
    return Bad("MatMulGemvVariant", StrCat("bad output: m=", m, " ldy=", ldy, " n=", w.n));
  }
  if (m == 0) return absl::OkStatus();
  invokeMatMulGemvVariant(w, x, m, y, ldy, epilogue.bias, epilogue.accumulate, variant, stream);
  return Launched("MatMulGemvVariant");
}

absl::Status RmsNorm(const float* x,
                     const float* weight,
                     int64_t m,
                     int64_t n,
                     float eps,
                     float* out,
                     cudaStream_t stream) {
  if (m < 0 || n <= 0 || !(eps >= 0)) return Bad("RmsNorm", "bad shape or epsilon");
  if (m == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || out == nullptr) return Bad("RmsNorm", "null pointer");
  invokeRmsNorm(x, weight, m, n, eps, out, stream);
  return Launched("RmsNorm");
}

absl::Status Rope(float* x,
                  int64_t ldx,
                  const int32_t* positions,
                  int64_t m,
                  int n_heads,
                  const RopeArgs& a,
                  cudaStream_t stream) {
  if (a.rot_dim <= 0 || a.rot_dim % 2 != 0 || a.rot_dim > a.head_dim) {
    return Bad("Rope", StrCat("rot_dim ", a.rot_dim, " with head_dim ", a.head_dim));
  }
  if (m < 0 || n_heads <= 0 || ldx < static_cast<int64_t>(n_heads) * a.head_dim) {
    return Bad("Rope", StrCat("bad shape m=", m, " heads=", n_heads, " ldx=", ldx));
  }
  if (m == 0) return absl::OkStatus();
  if (x == nullptr || positions == nullptr) return Bad("Rope", "null pointer");
  const float theta_scale = std::pow(a.base, -2.0f / static_cast<float>(a.rot_dim));
  invokeRope(x,
             ldx,
             positions,
             m,
             n_heads,
             a.head_dim,
             a.rot_dim,
             theta_scale,
             a.freq_scale,
             a.neox,
             stream);
  return Launched("Rope");
}

absl::Status SwiGlu(const float* gate,
                    const float* up,
                    int64_t ldi,
                    int64_t m,
                    int64_t n,
                    float* out,
                    int64_t ldo,
                    cudaStream_t stream) {
  if (m < 0 || n <= 0 || ldi < n || ldo < n) return Bad("SwiGlu", "bad shape");
  if (m == 0) return absl::OkStatus();
  if (gate == nullptr || up == nullptr || out == nullptr) return Bad("SwiGlu", "null pointer");
  invokeSwiGlu(gate, up, ldi, m, n, out, ldo, stream);
  return Launched("SwiGlu");
}

absl::Status Add(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n < 0) return Bad("Add", "negative size");
  if (n == 0) return absl::OkStatus();
  if (dst == nullptr || src == nullptr) return Bad("Add", "null pointer");
  invokeAdd(dst, src, n, stream);
  return Launched("Add");
}

absl::Status SumParts(
    const float* in, int parts, int64_t count, float* out, bool accumulate, cudaStream_t stream) {
  if (parts <= 0 || count < 0) return Bad("SumParts", "bad shape");
  if (count == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) return Bad("SumParts", "null pointer");
  invokeSumParts(in, parts, count, out, accumulate, stream);
  return Launched("SumParts");
}

absl::Status ConvertF32ToF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream) {
  if (n < 0) return Bad("ConvertF32ToF16", "negative size");
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) return Bad("ConvertF32ToF16", "null pointer");
  invokeF32ToF16(src, dst, n, stream);
  return Launched("ConvertF32ToF16");
}

absl::Status ConvertF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream) {
  if (n < 0) return Bad("ConvertF16ToF32", "negative size");
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) return Bad("ConvertF16ToF32", "null pointer");
  invokeF16ToF32(src, dst, n, stream);
  return Launched("ConvertF16ToF32");
}

absl::Status StoreKv(
    const float* k, const float* v, int64_t ld, int64_t m, const KvArgs& kv, cudaStream_t stream) {
  if (m < 0 || kv.kv_dim <= 0 || ld < kv.kv_dim || kv.layer < 0) return Bad("StoreKv", "bad shape");
  if (m == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr || kv.rows == nullptr || kv.pages == nullptr) {
    return Bad("StoreKv", "null pointer");
  }
  invokeStoreKv(k, v, ld, m, kv, stream);
  return Launched("StoreKv");
}

absl::Status Attention(const float* q,
                       int64_t ldq,
                       int64_t m,
                       const AttentionArgs& a,
                       const KvArgs& kv,
                       float* out,
                       int64_t ldo,
                       cudaStream_t stream) {
  if (a.head_dim <= 0 || a.head_dim > 256 || a.head_dim % 2 != 0) {
    return Bad("Attention", StrCat("head_dim ", a.head_dim, " (even, at most 256)"));
  }
  if (a.n_head <= 0 || a.n_head_kv <= 0 || a.n_head % a.n_head_kv != 0 || a.n_head > 65535) {
    return Bad("Attention", StrCat(a.n_head, " heads over ", a.n_head_kv, " KV heads"));
  }
  const int64_t q_dim = static_cast<int64_t>(a.n_head) * a.head_dim;
  if (m < 0 || ldq < q_dim || ldo < q_dim || kv.kv_dim != a.n_head_kv * a.head_dim) {
    return Bad("Attention", "bad strides or kv_dim");
  }
  if (m == 0) return absl::OkStatus();
  if (m > 0x7FFFFFFF) return Bad("Attention", "too many rows");
  if (q == nullptr || out == nullptr || kv.rows == nullptr || kv.pages == nullptr) {
    return Bad("Attention", "null pointer");
  }
  invokeAttention(q, ldq, m, a.n_head, a.n_head_kv, a.head_dim, a.scale, kv, out, ldo, stream);
  return Launched("Attention");
}

}  // namespace strata::kernels::cuda
