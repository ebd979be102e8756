// Helpers shared by the reference quantizers and the fast kernels (not part of the public API).
#pragma once

#include <cstdint>

namespace strata::kernels::internal {

// Unpacks the 8 six-bit scales and 8 six-bit mins of a Q4_K super-block (GGML's
// get_scale_min_k4): sub-blocks 0-3 use the low 6 bits of bytes 0-3 (scales) and 4-7 (mins);
// sub-blocks 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits from the top bits of
// bytes 0-7.
inline void UnpackQ4KScales(const uint8_t* s, uint8_t* scales, uint8_t* mins) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = s[j] & 63;
    mins[j] = s[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    scales[j] = static_cast<uint8_t>((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    mins[j] = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Inverse of UnpackQ4KScales; every value must be < 64.
inline void PackQ4KScales(const uint8_t* scales, const uint8_t* mins, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(scales[j] | ((scales[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(mins[j] | ((mins[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4));
  }
}

// Q6_K code of element `i` (0..255) of a super-block, in 0..63 (subtract 32 for the value).
inline int Q6KCode(const uint8_t* ql, const uint8_t* qh, int i) {
  const int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
  const uint8_t* low = ql + 64 * half + (quarter & 1) * 32;
  const int lo = (quarter < 2) ? (low[l] & 0x0F) : (low[l] >> 4);
  const int hi = (qh[32 * half + l] >> (2 * quarter)) & 3;
  return lo | (hi << 4);
}

}  // namespace strata::kernels::internal
