// Per weight dtype, how one lane of a product kernel loads a chunk of a weight row and of an
// activation row and computes the chunk's contribution to the dot product (see matmul.cu).
//
// Compiled by nvcc for the kernels, and by the host compiler for tests (tests/cuda/traits_test.cc),
// which check the bit manipulation of every format against the CPU reference without a GPU: the
// few intrinsics used get exact host equivalents below.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cuda/launchers.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define STRATA_DEVICE __device__ __forceinline__
#define STRATA_UNROLL _Pragma("unroll")
#else
#include <vector_functions.h>
#include <vector_types.h>

#include <bit>
#include <cmath>

#include "kernels/quant.h"
#define STRATA_DEVICE inline
#define STRATA_UNROLL
#endif

namespace strata::kernels::cuda::internal {

#if defined(__CUDACC__)
STRATA_DEVICE float Half(uint16_t h) { return __half2float(__ushort_as_half(h)); }
#else
// Host equivalents of the CUDA intrinsics (exact: same IEEE operations, same integer results).
inline float Half(uint16_t h) { return Fp16ToFp32(h); }
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(b >> (8 * i));
  }
  return c;
}
inline unsigned __vsub4(unsigned a, unsigned b) {
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) {
    r |= ((((a >> (8 * i)) & 0xFF) - ((b >> (8 * i)) & 0xFF)) & 0xFF) << (8 * i);
  }
  return r;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __uint_as_float(uint32_t u) { return std::bit_cast<float>(u); }
#endif

STRATA_DEVICE float Bf16(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

template <typename T>
STRATA_DEVICE T Ld(const void* p) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
#endif
}

STRATA_DEVICE float2 Meta(const DeviceActView& x, int64_t row, int64_t block32) {
  return Ld<float2>(x.meta + (row * (x.k / 32) + block32) * 2);
}

// Sum of dp4a over 4 words.
STRATA_DEVICE int Dot4(int4 a, int4 b, int acc) {
  acc = __dp4a(a.x, b.x, acc);
  acc = __dp4a(a.y, b.y, acc);
  acc = __dp4a(a.z, b.z, acc);
  return __dp4a(a.w, b.w, acc);
}
STRATA_DEVICE int4 Lo(int4 v) {
  return make_int4(v.x & 0x0F0F0F0F, v.y & 0x0F0F0F0F, v.z & 0x0F0F0F0F, v.w & 0x0F0F0F0F);
}
STRATA_DEVICE int4 Hi(int4 v) {
  return make_int4((v.x >> 4) & 0x0F0F0F0F,
                   (v.y >> 4) & 0x0F0F0F0F,
                   (v.z >> 4) & 0x0F0F0F0F,
                   (v.w >> 4) & 0x0F0F0F0F);
}

// ---------------------------------------------------------------------------------------------
// Per weight dtype: the chunk (elements one lane handles at once), how to load one chunk of a
// weight row and of an activation row, and the chunk's contribution to the dot product.

template <DType T>
struct Traits;

// Q4_0 x Q8_0: chunk = one 32-block. CPU: d_w * d_x * sum((q - 8) * x).
template <>
struct Traits<DType::kQ4_0> {
  static constexpr int kChunk = 32;
  struct W {
    int4 q;
    float d;
  };
  struct X {
    int4 lo, hi;
    float d, sum;
  };
  // Raw scale bits per block (the decode kernels load codes and scale bits themselves, then
  // build W with Make, so both paths see identical values).
  static constexpr int kScaleBytes = 2;
  STRATA_DEVICE static W Make(int4 q, uint32_t scale) {
    return {q, Half(static_cast<uint16_t>(scale & 0xFFFF))};
  }
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    return Make(Ld<int4>(w.q + row * (w.k / 2) + c * 16),
                Ld<uint16_t>(w.d + (row * (w.k / 32) + c) * 2));
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    const int8_t* q = x.q + row * x.k + c * 32;
    const float2 m = Meta(x, row, c);
    return {Ld<int4>(q), Ld<int4>(q + 16), m.x, m.y};
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const int s = Dot4(Hi(w.q), x.hi, Dot4(Lo(w.q), x.lo, 0));
    const int isum = s - 8 * static_cast<int>(x.sum);
    return __fmul_rn(__fmul_rn(w.d, x.d), static_cast<float>(isum));
  }
};

// Q4_1 x Q8_1: d_w * d_x * sum(q * x) + m_w * s_x.
template <>
struct Traits<DType::kQ4_1> {
  static constexpr int kChunk = 32;
  struct W {
    int4 q;
    float d, m;
  };
  struct X {
    int4 lo, hi;
    float d, s;
  };
  static constexpr int kScaleBytes = 4;  // (fp16 d, fp16 m)
  STRATA_DEVICE static W Make(int4 q, uint32_t dm) {
    return {q, Half(static_cast<uint16_t>(dm & 0xFFFF)), Half(static_cast<uint16_t>(dm >> 16))};
  }
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    return Make(Ld<int4>(w.q + row * (w.k / 2) + c * 16),
                Ld<uint32_t>(w.d + (row * (w.k / 32) + c) * 4));
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    const int8_t* q = x.q + row * x.k + c * 32;
    const float2 m = Meta(x, row, c);
    return {Ld<int4>(q), Ld<int4>(q + 16), m.x, m.y};
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const int isum = Dot4(Hi(w.q), x.hi, Dot4(Lo(w.q), x.lo, 0));
    return __fadd_rn(__fmul_rn(__fmul_rn(w.d, x.d), static_cast<float>(isum)), __fmul_rn(w.m, x.s));
  }
};

// Q8_0 x Q8_0.
template <>
struct Traits<DType::kQ8_0> {
  static constexpr int kChunk = 32;
  struct W {
    int4 a, b;
    float d;
  };
  struct X {
    int4 a, b;
    float d;
  };
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    const uint8_t* q = w.q + row * w.k + c * 32;
    return {Ld<int4>(q), Ld<int4>(q + 16), Half(Ld<uint16_t>(w.d + (row * (w.k / 32) + c) * 2))};
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    const int8_t* q = x.q + row * x.k + c * 32;
    return {Ld<int4>(q), Ld<int4>(q + 16), Meta(x, row, c).x};
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const int isum = Dot4(w.b, x.b, Dot4(w.a, x.a, 0));
    return __fmul_rn(__fmul_rn(w.d, x.d), static_cast<float>(isum));
  }
};

// Q4_K x Q8_K: chunk = 64 elements, the two 32-wide sub-blocks 2c', 2c'+1 sharing one 32-byte
// run of codes (low and high nibbles). Contribution:
//   d_w d_x (sc0 s0 + sc1 s1) - dmin_w d_x (mn0 b0 + mn1 b1),   b = sum of the x codes.
template <>
struct Traits<DType::kQ4_K> {
  static constexpr int kChunk = 64;
  struct W {
    int4 a, b;
    float d, dmin;
    int sc0, sc1, mn0, mn1;
  };
  struct X {
    int4 x0, x1, x2, x3;
    float d, b0, b1;
  };
  STRATA_DEVICE static int Byte(uint32_t w0, uint32_t w1, uint32_t w2, int i) {
    const uint32_t w = i < 4 ? w0 : (i < 8 ? w1 : w2);
    return static_cast<int>((w >> (8 * (i & 3))) & 0xFF);
  }
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    const int64_t nb = w.k / 256, sb = c >> 2;
    const int cc = static_cast<int>(c & 3);
    const uint8_t* q = w.q + row * (w.k / 2) + sb * 128 + cc * 32;
    const uint8_t* s = w.s + (row * nb + sb) * 12;
    const uint32_t s0 = Ld<uint32_t>(s), s1 = Ld<uint32_t>(s + 4), s2 = Ld<uint32_t>(s + 8);
    const uint32_t dd = Ld<uint32_t>(w.d + (row * nb + sb) * 4);
    W r;
    r.a = Ld<int4>(q);
    r.b = Ld<int4>(q + 16);
    r.d = Half(dd & 0xFFFF);
    r.dmin = Half(dd >> 16);
    const int j0 = 2 * cc, j1 = 2 * cc + 1;  // GGML's get_scale_min_k4
    if (cc < 2) {
      r.sc0 = Byte(s0, s1, s2, j0) & 63;
      r.mn0 = Byte(s0, s1, s2, j0 + 4) & 63;
      r.sc1 = Byte(s0, s1, s2, j1) & 63;
      r.mn1 = Byte(s0, s1, s2, j1 + 4) & 63;
    } else {
      r.sc0 = (Byte(s0, s1, s2, j0 + 4) & 0x0F) | ((Byte(s0, s1, s2, j0 - 4) >> 6) << 4);
      r.mn0 = (Byte(s0, s1, s2, j0 + 4) >> 4) | ((Byte(s0, s1, s2, j0) >> 6) << 4);
      r.sc1 = (Byte(s0, s1, s2, j1 + 4) & 0x0F) | ((Byte(s0, s1, s2, j1 - 4) >> 6) << 4);
      r.mn1 = (Byte(s0, s1, s2, j1 + 4) >> 4) | ((Byte(s0, s1, s2, j1) >> 6) << 4);
    }
    return r;
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    const int8_t* q = x.q + row * x.k + c * 64;
    const float2 m0 = Meta(x, row, 2 * c), m1 = Meta(x, row, 2 * c + 1);
    return {Ld<int4>(q), Ld<int4>(q + 16), Ld<int4>(q + 32), Ld<int4>(q + 48), m0.x, m0.y, m1.y};
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const int s0 = Dot4(Lo(w.b), x.x1, Dot4(Lo(w.a), x.x0, 0));
    const int s1 = Dot4(Hi(w.b), x.x3, Dot4(Hi(w.a), x.x2, 0));
    const int isum = w.sc0 * s0 + w.sc1 * s1;
    const int imin = w.mn0 * static_cast<int>(x.b0) + w.mn1 * static_cast<int>(x.b1);
    return __fsub_rn(__fmul_rn(__fmul_rn(w.d, x.d), static_cast<float>(isum)),
                     __fmul_rn(__fmul_rn(w.dmin, x.d), static_cast<float>(imin)));
  }
};

// Q6_K x Q8_K: chunk = (half h, 16 columns l0..l0+15) of a super-block: elements
// 128h + 32q + l for the four quarters q, each a 16-group with its own int8 scale.
// Contribution: d_w d_x sum_q scale_q sum_l (code - 32) x.
template <>
struct Traits<DType::kQ6_K> {
  static constexpr int kChunk = 64;
  struct W {
    int4 a, b, h;
    int sc0, sc1, sc2, sc3;
    float d;
  };
  struct X {
    int4 x0, x1, x2, x3;
    float d;
  };
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    const int64_t nb = w.k / 256, sb = c >> 2;
    const int cc = static_cast<int>(c & 3), hh = cc >> 1, l0 = (cc & 1) * 16;
    const uint8_t* base = w.q + (row * nb + sb) * 192;
    const int8_t* sc =
        reinterpret_cast<const int8_t*>(w.s) + (row * nb + sb) * 16 + 8 * hh + l0 / 16;
    W r;
    r.a = Ld<int4>(base + 64 * hh + l0);
    r.b = Ld<int4>(base + 64 * hh + 32 + l0);
    r.h = Ld<int4>(base + 128 + 32 * hh + l0);
    r.sc0 = sc[0];
    r.sc1 = sc[2];
    r.sc2 = sc[4];
    r.sc3 = sc[6];
    r.d = Half(Ld<uint16_t>(w.d + (row * nb + sb) * 2));
    return r;
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    const int64_t sb = c >> 2;
    const int cc = static_cast<int>(c & 3), hh = cc >> 1, l0 = (cc & 1) * 16;
    const int8_t* q = x.q + row * x.k + sb * 256 + 128 * hh + l0;
    return {
        Ld<int4>(q), Ld<int4>(q + 32), Ld<int4>(q + 64), Ld<int4>(q + 96), Meta(x, row, sb * 8).x};
  }
  // Codes of quarter `quarter` for 4 columns: low nibbles from a/b, two high bits from h.
  STRATA_DEVICE static int Codes(int a, int b, int h, int quarter) {
    int v;
    switch (quarter) {
      case 0:
        v = (a & 0x0F0F0F0F) | ((h << 4) & 0x30303030);
        break;
      case 1:
        v = (b & 0x0F0F0F0F) | ((h << 2) & 0x30303030);
        break;
      case 2:
        v = ((a >> 4) & 0x0F0F0F0F) | (h & 0x30303030);
        break;
      default:
        v = ((b >> 4) & 0x0F0F0F0F) | ((h >> 2) & 0x30303030);
        break;
    }
    return static_cast<int>(__vsub4(static_cast<unsigned>(v), 0x20202020u));
  }
  STRATA_DEVICE static int Quarter(const W& w, int4 x, int quarter) {
    int t = __dp4a(Codes(w.a.x, w.b.x, w.h.x, quarter), x.x, 0);
    t = __dp4a(Codes(w.a.y, w.b.y, w.h.y, quarter), x.y, t);
    t = __dp4a(Codes(w.a.z, w.b.z, w.h.z, quarter), x.z, t);
    return __dp4a(Codes(w.a.w, w.b.w, w.h.w, quarter), x.w, t);
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const int isum = w.sc0 * Quarter(w, x.x0, 0) + w.sc1 * Quarter(w, x.x1, 1) +
                     w.sc2 * Quarter(w, x.x2, 2) + w.sc3 * Quarter(w, x.x3, 3);
    return __fmul_rn(__fmul_rn(w.d, x.d), static_cast<float>(isum));
  }
};

// Float weights x f32 activations: chunk = 8 values, multiplied and added in order.
struct FloatX {
  float4 a, b;
};
STRATA_DEVICE FloatX LoadFloatX(const DeviceActView& x, int64_t row, int64_t c) {
  const float* p = x.f + row * x.ldf + c * 8;
  return {Ld<float4>(p), Ld<float4>(p + 4)};
}
STRATA_DEVICE float Dot8(const float* w, const FloatX& x) {
  float s = __fmul_rn(w[0], x.a.x);
  s = __fmaf_rn(w[1], x.a.y, s);
  s = __fmaf_rn(w[2], x.a.z, s);
  s = __fmaf_rn(w[3], x.a.w, s);
  s = __fmaf_rn(w[4], x.b.x, s);
  s = __fmaf_rn(w[5], x.b.y, s);
  s = __fmaf_rn(w[6], x.b.z, s);
  return __fmaf_rn(w[7], x.b.w, s);
}

// F16 and BF16: 8 16-bit values a chunk, widened to float by `Widen`.
template <float (*Widen)(uint32_t)>
struct HalfWidthTraits {
  static constexpr int kChunk = 8;
  using W = uint4;
  using X = FloatX;
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    return Ld<uint4>(w.q + (row * w.k + c * 8) * 2);
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    return LoadFloatX(x, row, c);
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
    float f[8];
    STRATA_UNROLL
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = Widen(u[i] & 0xFFFF);
      f[2 * i + 1] = Widen(u[i] >> 16);
    }
    return Dot8(f, x);
  }
};

STRATA_DEVICE float WidenF16(uint32_t bits16) { return Half(static_cast<uint16_t>(bits16)); }

template <>
struct Traits<DType::kF16> : HalfWidthTraits<WidenF16> {};

template <>
struct Traits<DType::kBF16> : HalfWidthTraits<Bf16> {};

template <>
struct Traits<DType::kF32> {
  static constexpr int kChunk = 8;
  struct W {
    float4 a, b;
  };
  using X = FloatX;
  STRATA_DEVICE static W Load(const DeviceWeightView& w, int64_t row, int64_t c) {
    const uint8_t* p = w.q + (row * w.k + c * 8) * 4;
    return {Ld<float4>(p), Ld<float4>(p + 16)};
  }
  STRATA_DEVICE static X LoadX(const DeviceActView& x, int64_t row, int64_t c) {
    return LoadFloatX(x, row, c);
  }
  STRATA_DEVICE static float Dot(const W& w, const X& x) {
    const float f[8] = {w.a.x, w.a.y, w.a.z, w.a.w, w.b.x, w.b.y, w.b.z, w.b.w};
    return Dot8(f, x);
  }
};

}  // namespace strata::kernels::cuda::internal
