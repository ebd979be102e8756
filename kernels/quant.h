// Quantized block layouts (bit-compatible with GGUF/GGML) and scalar reference conversions.
//
// Weight formats: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K. Activation formats used by the integer dot
// products: Q8_0 (for Q4_0/Q8_0 weights), Q8_1 (for Q4_1), Q8_K (for K-quants).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace strata::kernels {

constexpr int kQK = 32;    // elements per block of the 32-wide formats
constexpr int kQKK = 256;  // elements per super-block of the K formats

struct BlockQ4_0 {
  uint16_t d;           // fp16 scale
  uint8_t qs[kQK / 2];  // byte j: low nibble = element j, high nibble = element j+16
};
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
struct BlockQ8_1 {
  uint16_t d;  // fp16 scale
  uint16_t s;  // fp16 of d * sum(qs)
  int8_t qs[kQK];
};
struct BlockQ4_K {
  uint16_t d;            // fp16 super-block scale for the 6-bit scales
  uint16_t dmin;         // fp16 super-block scale for the 6-bit mins
  uint8_t scales[12];    // 8 scales and 8 mins, 6 bits each, packed
  uint8_t qs[kQKK / 2];  // 4-bit codes
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];      // low 4 bits
  uint8_t qh[kQKK / 4];      // high 2 bits
  int8_t scales[kQKK / 16];  // 8-bit sub-block scales
  uint16_t d;                // fp16 super-block scale
};
struct BlockQ8_K {
  float d;  // f32 scale
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];  // sums of groups of 16 codes
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

// IEEE half and bfloat16 conversions (round to nearest even; exact on the way up).
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);
float Bf16ToFp32(uint16_t h);
uint16_t Fp32ToBf16(float f);

// Scalar reference: expands `n` elements (a multiple of the block size) of `src` to f32.
// Supports every DType in dtype.h.
void DequantizeRowRef(DType dtype, const void* src, float* dst, int64_t n);

// Scalar reference quantizer: writes `n` elements of `src` in `dtype`'s layout (every weight
// format plus F32/F16/BF16 and the activation formats Q8_0/Q8_1/Q8_K). Used by the test model
// builder and the GGUF writer; not on the inference hot path.
void QuantizeRowRef(DType dtype, const float* src, void* dst, int64_t n);

}  // namespace strata::kernels
