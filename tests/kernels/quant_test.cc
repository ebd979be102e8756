// Reference conversions and block formats: fp16/bf16 bit-exactness, quantize/dequantize round
// trips within per-format error bounds, and the activation formats' stored fields.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#if defined(STRATA_TEST_F16C)
#include <immintrin.h>
#endif

#include "gtest/gtest.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"
#include "kernels/tensor.h"

namespace strata::kernels {
namespace {

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t ToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Fp16Test, SpecialValues) {
  EXPECT_EQ(Fp32ToFp16(0.0f), 0x0000);
  EXPECT_EQ(Fp32ToFp16(-0.0f), 0x8000);
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3C00);
  EXPECT_EQ(Fp32ToFp16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7BFF);    // largest finite
  EXPECT_EQ(Fp32ToFp16(65519.996f), 0x7BFF);  // just below the rounding boundary
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7C00);    // tie rounds to even = overflow
  EXPECT_EQ(Fp32ToFp16(INFINITY), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-INFINITY), 0xFC00);
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even is 0
  EXPECT_EQ(Fp32ToFp16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 units: even is 2
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie: keep even mantissa
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie: round up to even
  const uint16_t nan = Fp32ToFp16(NAN);
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(Fp16ToFp32(0x7E00)));
  EXPECT_EQ(Fp16ToFp32(0x7C00), INFINITY);
  EXPECT_EQ(Fp16ToFp32(0xFC00), -INFINITY);
  EXPECT_EQ(Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFp32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(ToBits(Fp16ToFp32(0x8000)), 0x80000000u);
}

TEST(Fp16Test, AllHalvesRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), h) << std::hex << h;
  }
}

#if defined(STRATA_TEST_F16C)
__attribute__((target("f16c"))) uint16_t HwToHalf(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float HwFromHalf(uint16_t h) { return _cvtsh_ss(h); }

// The F16C instructions implement IEEE conversions; the software ones must agree bit for bit
// (the AVX2 kernels use the hardware ones, the scalar kernels the software ones).
TEST(Fp16Test, MatchesF16cHardware) {
  if (!__builtin_cpu_supports("avx")) GTEST_SKIP() << "no F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float sw = Fp16ToFp32(static_cast<uint16_t>(h)),
                hw = HwFromHalf(static_cast<uint16_t>(h));
    ASSERT_EQ(ToBits(sw), ToBits(hw)) << std::hex << h;
  }
  // Every float whose exponent is in the interesting range, sampled densely, plus all the rest
  // sparsely; both signs.
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 0x3FB) {
    const float f = FromBits(static_cast<uint32_t>(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), HwToHalf(f)) << std::hex << u;
  }
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 7) {  // 2^-25 .. 2^16
    ASSERT_EQ(Fp32ToFp16(FromBits(u)), HwToHalf(FromBits(u))) << std::hex << u;
  }
}
#endif

TEST(Bf16Test, SpecialValuesAndRounding) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(Fp32ToBf16(-0.0f), 0x8000);
  EXPECT_EQ(Fp32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie: keep even
  EXPECT_EQ(Fp32ToBf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie: round up to even
  EXPECT_EQ(Fp32ToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(Fp32ToBf16(INFINITY), 0x7F80);
  EXPECT_EQ(Fp32ToBf16(-INFINITY), 0xFF80);
  EXPECT_EQ(Fp32ToBf16(FromBits(0x7F7FFFFF)), 0x7F80);    // max float rounds to infinity
  EXPECT_EQ(Fp32ToBf16(FromBits(0x00000001)), 0x0000);    // smallest subnormal rounds to zero
  EXPECT_EQ(Fp32ToBf16(FromBits(0x00010000)), 0x0001);    // a bf16 subnormal is kept
  const uint16_t nan = Fp32ToBf16(FromBits(0x7F800001));  // signalling nan with a low payload
  EXPECT_TRUE(std::isnan(Bf16ToFp32(nan)));
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Bf16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToBf16(f), h);
  }
}

TEST(TensorTest, ShapeString) {
  Tensor t(nullptr, DType::kQ4_1, {576, 1536});
  EXPECT_EQ(t.ShapeString(), "{576, 1536} q4_1");
  EXPECT_EQ(Tensor(nullptr, DType::kF32, {7}).ShapeString(), "{7} f32");
}

// ---------------------------------------------------------------------------------------------
// Round trips. Values are drawn with a spread of magnitudes (and an offset in some blocks) so the
// scales and minimums of every block differ.

std::vector<float> TestValues(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = i / 32;
    const float scale = std::ldexp(1.0f, static_cast<int>(block % 7) - 3);
    const float offset = (block % 3 == 1) ? 2.0f * scale : 0.0f;
    v[i] = normal(rng) * scale + offset;
  }
  return v;
}

struct RoundTripCase {
  DType dtype;
  int group;  // elements the bound is computed over
};

// Largest error allowed for a group of values, from how each format quantizes (see quant_ref.cc):
double ErrorBound(DType dtype, const float* x, int n) {
  double amax = 0, lo = 0, hi = 0;
  for (int i = 0; i < n; ++i) {
    amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
    lo = std::min(lo, static_cast<double>(x[i]));
    hi = std::max(hi, static_cast<double>(x[i]));
  }
  const double lo_any = *std::min_element(x, x + n), hi_any = *std::max_element(x, x + n);
  switch (dtype) {
    case DType::kF32:
      return 0.0;
    case DType::kF16:
      return amax * std::ldexp(1.0, -11);
    case DType::kBF16:
      return amax * std::ldexp(1.0, -8);
    // d = amax/127; half a step, plus |q| <= 127 times the fp16 rounding of d (2^-11 relative).
    case DType::kQ8_0:
    case DType::kQ8_1:
      return amax / 127 * (0.5 + 127 * std::ldexp(1.0, -11)) * 1.001;
    case DType::kQ8_K:
      return amax / 127 * 0.5 * 1.001;
    // d = amax/8: the value of largest magnitude sits at code 0; one of the opposite sign may be
    // clamped from +8 to +7, a full step.
    case DType::kQ4_0:
      return amax / 8 * (1.0 + 8 * std::ldexp(1.0, -11)) * 1.001;
    // d = range/15: half a step plus the fp16 rounding of d (15 steps) and of the minimum.
    case DType::kQ4_1:
      return (hi_any - lo_any) / 15 * (0.5 + 15 * std::ldexp(1.0, -11)) +
             std::fabs(lo_any) * std::ldexp(1.0, -11) + 1e-7;
    // 6-bit sub-block steps: half a step, plus up to 15 codes times half a quantum of the step
    // (d/2 with d = max step/63), plus half a quantum of the offset.
    case DType::kQ4_K:
      return (hi - lo) / 15 * (0.5 + 15.0 / 126 + 0.02) + (-lo) / 126 + 1e-6;
    // int8 sub-block steps (quantum d = max step/127, max step = amax/32): half a step plus 32
    // codes times half a quantum.
    case DType::kQ6_K:
      return amax / 32 * (0.5 + 32.0 / 254 + 0.02) + 1e-6;
  }
  return 0.0;
}

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTripTest, WithinBound) {
  const RoundTripCase c = GetParam();
  const int64_t n = 1024;
  const std::vector<float> x = TestValues(n, 7 + static_cast<uint32_t>(c.dtype));
  std::vector<uint8_t> q(RowBytes(c.dtype, n));
  std::vector<float> y(n);
  QuantizeRowRef(c.dtype, x.data(), q.data(), n);
  DequantizeRowRef(c.dtype, q.data(), y.data(), n);
  double sq = 0, sq_err = 0;
  for (int64_t g = 0; g < n; g += c.group) {
    const double bound = ErrorBound(c.dtype, x.data() + g, c.group);
    for (int64_t i = g; i < g + c.group; ++i) {
      ASSERT_LE(std::fabs(static_cast<double>(y[i]) - x[i]), bound) << "element " << i;
      sq += static_cast<double>(x[i]) * x[i];
      sq_err += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
    }
  }
  // And the typical error is well below the worst case: relative RMS error per format.
  const double rel_rms = std::sqrt(sq_err / sq);
  const double max_rel_rms = c.dtype == DType::kF32                               ? 0.0
                             : c.dtype == DType::kQ4_0 || c.dtype == DType::kQ4_1 ? 0.12
                             : c.dtype == DType::kQ4_K                            ? 0.15
                             : c.dtype == DType::kQ6_K                            ? 0.04
                             : c.dtype == DType::kQ8_K                            ? 0.02
                                                                                  : 0.01;
  EXPECT_LE(rel_rms, max_rel_rms);
}

INSTANTIATE_TEST_SUITE_P(Formats,
                         RoundTripTest,
                         ::testing::Values(RoundTripCase{DType::kF32, 1},
                                           RoundTripCase{DType::kF16, 1},
                                           RoundTripCase{DType::kBF16, 1},
                                           RoundTripCase{DType::kQ4_0, 32},
                                           RoundTripCase{DType::kQ4_1, 32},
                                           RoundTripCase{DType::kQ8_0, 32},
                                           RoundTripCase{DType::kQ8_1, 32},
                                           RoundTripCase{DType::kQ4_K, 256},
                                           RoundTripCase{DType::kQ6_K, 256},
                                           RoundTripCase{DType::kQ8_K, 256}),
                         [](const auto& info) { return std::string(Info(info.param.dtype).name); });

TEST(QuantTest, Q4KSubBlockBoundsAreTighter) {
  // Per 32-wide sub-block the Q4_K error is bounded by that sub-block's own range, not the
  // super-block's, up to the 6-bit quantization of the step.
  const std::vector<float> x = TestValues(256, 3);
  BlockQ4_K b;
  QuantizeRowRef(DType::kQ4_K, x.data(), &b, 256);
  std::vector<float> y(256);
  DequantizeRowRef(DType::kQ4_K, &b, y.data(), 256);
  double max_step = 0;
  for (int j = 0; j < 8; ++j) {
    const auto [lo, hi] = std::minmax_element(x.begin() + 32 * j, x.begin() + 32 * j + 32);
    max_step = std::max(max_step, (std::max(0.0f, *hi) - std::min(0.0f, *lo)) / 15.0);
  }
  for (int j = 0; j < 8; ++j) {
    const auto [lo, hi] = std::minmax_element(x.begin() + 32 * j, x.begin() + 32 * j + 32);
    const double step = (std::max(0.0f, *hi) - std::min(0.0f, *lo)) / 15.0;
    const double bound = step / 2 + 16 * max_step / 126 + 1e-6;
    for (int l = 0; l < 32; ++l) EXPECT_LE(std::fabs(y[32 * j + l] - x[32 * j + l]), bound);
  }
}

TEST(QuantTest, Q8_1StoresScaledSum) {
  const std::vector<float> x = TestValues(128, 11);
  BlockQ8_1 b[4];
  QuantizeRowRef(DType::kQ8_1, x.data(), b, 128);
  for (int i = 0; i < 4; ++i) {
    float amax = 0;
    int sum = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * i + j]));
    for (int j = 0; j < 32; ++j) sum += b[i].qs[j];
    const float d = amax / 127.0f;
    EXPECT_EQ(b[i].d, Fp32ToFp16(d));
    EXPECT_EQ(b[i].s, Fp32ToFp16(d * static_cast<float>(sum)));
  }
}

TEST(QuantTest, Q8_KStoresGroupSums) {
  const std::vector<float> x = TestValues(256, 12);
  BlockQ8_K b;
  QuantizeRowRef(DType::kQ8_K, x.data(), &b, 256);
  for (int g = 0; g < 16; ++g) {
    int sum = 0;
    for (int j = 0; j < 16; ++j) sum += b.qs[16 * g + j];
    EXPECT_EQ(b.bsums[g], sum);
  }
}

TEST(QuantTest, Q4KScalePackingRoundTrips) {
  uint8_t sc[8], mn[8], packed[12], sc2[8], mn2[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((j * 23 + 5) % 64);
    mn[j] = static_cast<uint8_t>((j * 41 + 63) % 64);
  }
  internal::PackQ4KScales(sc, mn, packed);
  internal::UnpackQ4KScales(packed, sc2, mn2);
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(sc2[j], sc[j]);
    EXPECT_EQ(mn2[j], mn[j]);
  }
}

// GGML's Q4_0 layout: byte j holds element j in the low nibble and element j + 16 in the high.
TEST(QuantTest, Q4_0DequantizesKnownBlock) {
  BlockQ4_0 b;
  b.d = Fp32ToFp16(0.5f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  DequantizeRowRef(DType::kQ4_0, &b, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * (j - 8));
    EXPECT_EQ(y[j + 16], 0.5f * (15 - j - 8));
  }
}

}  // namespace
}  // namespace strata::kernels
