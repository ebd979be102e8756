// AVX2 + FMA + F16C attention. Compiled with -mavx2 -mfma -mf16c; called only when the CPU has
// them.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/quant.h"

namespace strata::kernels {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

inline __m256 LoadF16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

}  // namespace

void AttendHeadAvx2(const float* q,
                    const uint16_t* const* k,
                    const uint16_t* const* v,
                    int n,
                    int head_dim,
                    float scale,
                    float* scores,
                    float* out) {
  float max_score = -INFINITY;
  for (int j = 0; j < n; ++j) {
    __m256 acc = _mm256_setzero_ps();
    for (int d = 0; d < head_dim; d += 8) {
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), LoadF16(k[j] + d), acc);
    }
    const float s = HorizontalSum(acc) * scale;
    scores[j] = s;
    max_score = s > max_score ? s : max_score;
  }
  float sum = 0;
  for (int j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  // head_dim <= 256 in every supported model; accumulate in registers in chunks of 64.
  for (int d0 = 0; d0 < head_dim; d0 += 64) {
    const int width = head_dim - d0 < 64 ? head_dim - d0 : 64;
    __m256 acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = _mm256_setzero_ps();
    for (int j = 0; j < n; ++j) {
      const __m256 p = _mm256_set1_ps(scores[j]);
      const uint16_t* vj = v[j] + d0;
      for (int c = 0; c < width / 8; ++c) acc[c] = _mm256_fmadd_ps(p, LoadF16(vj + 8 * c), acc[c]);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int c = 0; c < width / 8; ++c)
      _mm256_storeu_ps(out + d0 + 8 * c, _mm256_mul_ps(acc[c], inv));
  }
}

void ConvertToF16Avx2(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = Fp32ToFp16(src[i]);
}

}  // namespace strata::kernels
