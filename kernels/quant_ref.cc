// Scalar reference conversions, dequantizers and quantizers for every supported dtype. Readable
// rather than fast: the hot paths live in matmul_avx2.cc / matmul_scalar.cc.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/logging.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace strata::kernels {
namespace {

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
int RoundClamp(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::nearbyint(v)), lo, hi);  // ties to even
}
float Half(uint16_t h) { return Fp16ToFp32(h); }

// ---------------------------------------------------------------------------------------------
// Dequantizers: one block at a time.

void DequantQ4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * static_cast<float>((b[i].qs[j] & 0x0F) - 8);
      y[j + kQK / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
    }
  }
}

void DequantQ4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Half(b[i].d), m = Half(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * static_cast<float>(b[i].qs[j] & 0x0F) + m;
      y[j + kQK / 2] = d * static_cast<float>(b[i].qs[j] >> 4) + m;
    }
  }
}

template <typename Block>  // Q8_0 and Q8_1 share the value layout
void DequantQ8(const Block* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = d * static_cast<float>(b[i].qs[j]);
  }
}

void DequantQ4_K(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d), dmin = Half(b[i].dmin);
    uint8_t sc[8], mn[8];
    internal::UnpackQ4KScales(b[i].scales, sc, mn);
    for (int j = 0; j < 8; ++j, y += 32) {  // sub-block j: nibble (j & 1) of bytes 32*(j/2)...
      const uint8_t* q = b[i].qs + 32 * (j / 2);
      for (int l = 0; l < 32; ++l) {
        const int code = (j & 1) ? (q[l] >> 4) : (q[l] & 0x0F);
        y[l] = d * sc[j] * static_cast<float>(code) - dmin * mn[j];
      }
    }
  }
}

void DequantQ6_K(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = Half(b[i].d);
    for (int e = 0; e < kQKK; ++e) {
      const int code = internal::Q6KCode(b[i].ql, b[i].qh, e) - 32;
      y[e] = d * b[i].scales[e / 16] * static_cast<float>(code);
    }
  }
}

void DequantQ8_K(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    for (int j = 0; j < kQKK; ++j) y[j] = b[i].d * static_cast<float>(b[i].qs[j]);
  }
}

// ---------------------------------------------------------------------------------------------
// Quantizers.

// Symmetric 8-bit: d = amax / 127, q = round_even(x / d) computed as x * (1 / d). This exact
// arithmetic is what the MatMul activation quantizers reproduce (scalar and AVX2).
float QuantizeQ8Block(const float* x, int n, int8_t* q, int* sum) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  int s = 0;
  for (int j = 0; j < n; ++j) {
    q[j] = static_cast<int8_t>(RoundClamp(x[j] * id, -127, 127));
    s += q[j];
  }
  if (sum != nullptr) *sum = s;
  return d;
}

void QuantQ4_0(const float* x, BlockQ4_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float vmax = 0.0f;  // the value of largest magnitude, with its sign
    for (int j = 0; j < kQK; ++j) {
      if (std::fabs(x[j]) > std::fabs(vmax)) vmax = x[j];
    }
    b[i].d = Fp32ToFp16(vmax / -8.0f);  // vmax maps to code 0 (value -8)
    const float d = Half(b[i].d), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = RoundClamp(x[j] * id, -8, 7) + 8;
      const int hi = RoundClamp(x[j + kQK / 2] * id, -8, 7) + 8;
      b[i].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void QuantQ4_1(const float* x, BlockQ4_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    const auto [lo_it, hi_it] = std::minmax_element(x, x + kQK);
    b[i].d = Fp32ToFp16((*hi_it - *lo_it) / 15.0f);
    b[i].m = Fp32ToFp16(*lo_it);
    const float d = Half(b[i].d), m = Half(b[i].m), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = RoundClamp((x[j] - m) * id, 0, 15);
      const int hi = RoundClamp((x[j + kQK / 2] - m) * id, 0, 15);
      b[i].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void QuantQ8_0(const float* x, BlockQ8_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    b[i].d = Fp32ToFp16(QuantizeQ8Block(x, kQK, b[i].qs, nullptr));
  }
}

void QuantQ8_1(const float* x, BlockQ8_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    int sum = 0;
    const float d = QuantizeQ8Block(x, kQK, b[i].qs, &sum);
    b[i].d = Fp32ToFp16(d);
    b[i].s = Fp32ToFp16(d * static_cast<float>(sum));
  }
}

void QuantQ8_K(const float* x, BlockQ8_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    b[i].d = QuantizeQ8Block(x, kQKK, b[i].qs, nullptr);
    for (int g = 0; g < kQKK / 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += b[i].qs[16 * g + j];
      b[i].bsums[g] = static_cast<int16_t>(s);
    }
  }
}

// Q4_K: per 32-wide sub-block an affine range [min(0, lo), hi] in 15 steps; the 8 step sizes and
// 8 offsets are then quantized to 6 bits against the super-block scales d and dmin.
void QuantQ4_K(const float* x, BlockQ4_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float scale[8], offset[8], max_scale = 0.0f, max_offset = 0.0f;
    for (int j = 0; j < 8; ++j) {
      const auto [lo_it, hi_it] = std::minmax_element(x + 32 * j, x + 32 * j + 32);
      offset[j] = -std::min(0.0f, *lo_it);
      scale[j] = (std::max(0.0f, *hi_it) + offset[j]) / 15.0f;
      max_scale = std::max(max_scale, scale[j]);
      max_offset = std::max(max_offset, offset[j]);
    }
    b[i].d = Fp32ToFp16(max_scale / 63.0f);
    b[i].dmin = Fp32ToFp16(max_offset / 63.0f);
    const float d = Half(b[i].d), dmin = Half(b[i].dmin);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = static_cast<uint8_t>(d > 0.0f ? RoundClamp(scale[j] / d, 0, 63) : 0);
      mn[j] = static_cast<uint8_t>(dmin > 0.0f ? RoundClamp(offset[j] / dmin, 0, 63) : 0);
    }
    internal::PackQ4KScales(sc, mn, b[i].scales);
    std::memset(b[i].qs, 0, sizeof(b[i].qs));
    for (int j = 0; j < 8; ++j) {
      const float step = d * sc[j], off = dmin * mn[j];
      for (int l = 0; l < 32; ++l) {
        const int code = step > 0.0f ? RoundClamp((x[32 * j + l] + off) / step, 0, 15) : 0;
        b[i].qs[32 * (j / 2) + l] |= static_cast<uint8_t>(code << (4 * (j & 1)));
      }
    }
  }
}

// Q6_K: per 16-wide sub-block a signed step (the largest-magnitude value maps to code -32),
// quantized to int8 against the super-block scale d.
void QuantQ6_K(const float* x, BlockQ6_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float step[16], max_step = 0.0f;
    for (int s = 0; s < 16; ++s) {
      float vmax = 0.0f;
      for (int j = 0; j < 16; ++j) {
        if (std::fabs(x[16 * s + j]) > std::fabs(vmax)) vmax = x[16 * s + j];
      }
      step[s] = vmax / -32.0f;
      max_step = std::max(max_step, std::fabs(step[s]));
    }
    b[i].d = Fp32ToFp16(max_step / 127.0f);
    const float d = Half(b[i].d);
    std::memset(b[i].ql, 0, sizeof(b[i].ql));
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int s = 0; s < 16; ++s) {
      b[i].scales[s] = static_cast<int8_t>(d > 0.0f ? RoundClamp(step[s] / d, -127, 127) : 0);
    }
    for (int e = 0; e < kQKK; ++e) {
      const float st = d * b[i].scales[e / 16];
      const int code = (st != 0.0f ? RoundClamp(x[e] / st, -32, 31) : 0) + 32;
      const int half = e / 128, quarter = (e % 128) / 32, l = e % 32;
      b[i].ql[64 * half + 32 * (quarter & 1) + l] |=
          static_cast<uint8_t>((code & 0x0F) << (quarter < 2 ? 0 : 4));
      b[i].qh[32 * half + l] |= static_cast<uint8_t>((code >> 4) << (2 * quarter));
    }
  }
}

}  // namespace

float Fp16ToFp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in f32
    const float v = static_cast<float>(mant) * 0x1p-24f;
    return BitsFloat(FloatBits(v) | sign);
  }
  if (exp == 31) {  // inf, or nan made quiet like the F16C instruction does
    return BitsFloat(sign | 0x7F800000u | (mant << 13) | (mant != 0 ? 0x400000u : 0u));
  }
  return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t Fp32ToFp16(float f) {
  uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7FFFFFFFu;
  if (x > 0x7F800000u) return sign | 0x7E00 | ((x >> 13) & 0x3FF);  // nan: quiet, keep payload
  if (x >= 0x477FF000u) return sign | 0x7C00;                       // >= 65520 rounds to infinity
  if (x < 0x38800000u) {                // below 2^-14: subnormal half or zero
    if (x <= 0x33000000u) return sign;  // <= 2^-25 rounds (ties to even) to zero
    const uint32_t e = x >> 23, mant = (x & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - e;  // value = mant * 2^(e-150) = (mant >> shift) * 2^-24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t h = (x >> 13) - (112u << 10);  // rebias exponent 127 -> 15
  const uint32_t rem = x & 0x1FFF;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // carries into the exponent correctly
  return sign | static_cast<uint16_t>(h);
}

float Bf16ToFp32(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToBf16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet nan
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

void DequantizeRowRef(DType dtype, const void* src, float* dst, int64_t n) {
  const int64_t bs = Info(dtype).block_size;
  STRATA_CHECK(n % bs == 0) << "row of " << n << " is not a multiple of " << bs;
  const int64_t nb = n / bs;
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp16ToFp32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFp32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::kQ4_0:
      return DequantQ4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case DType::kQ4_1:
      return DequantQ4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case DType::kQ8_0:
      return DequantQ8(static_cast<const BlockQ8_0*>(src), dst, nb);
    case DType::kQ8_1:
      return DequantQ8(static_cast<const BlockQ8_1*>(src), dst, nb);
    case DType::kQ4_K:
      return DequantQ4_K(static_cast<const BlockQ4_K*>(src), dst, nb);
    case DType::kQ6_K:
      return DequantQ6_K(static_cast<const BlockQ6_K*>(src), dst, nb);
    case DType::kQ8_K:
      return DequantQ8_K(static_cast<const BlockQ8_K*>(src), dst, nb);
  }
}

void QuantizeRowRef(DType dtype, const float* src, void* dst, int64_t n) {
  const int64_t bs = Info(dtype).block_size;
  STRATA_CHECK(n % bs == 0) << "row of " << n << " is not a multiple of " << bs;
  const int64_t nb = n / bs;
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = Fp32ToFp16(src[i]);
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = Fp32ToBf16(src[i]);
      return;
    case DType::kQ4_0:
      return QuantQ4_0(src, static_cast<BlockQ4_0*>(dst), nb);
    case DType::kQ4_1:
      return QuantQ4_1(src, static_cast<BlockQ4_1*>(dst), nb);
    case DType::kQ8_0:
      return QuantQ8_0(src, static_cast<BlockQ8_0*>(dst), nb);
    case DType::kQ8_1:
      return QuantQ8_1(src, static_cast<BlockQ8_1*>(dst), nb);
    case DType::kQ4_K:
      return QuantQ4_K(src, static_cast<BlockQ4_K*>(dst), nb);
    case DType::kQ6_K:
      return QuantQ6_K(src, static_cast<BlockQ6_K*>(dst), nb);
    case DType::kQ8_K:
      return QuantQ8_K(src, static_cast<BlockQ8_K*>(dst), nb);
  }
}

}  // namespace strata::kernels
