#include "kernels/attention.h"

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "kernels/quant.h"

namespace strata::kernels {

void AttendHeadAvx2(const float* q,
                    const uint16_t* const* k,
                    const uint16_t* const* v,
                    int n,
                    int head_dim,
                    float scale,
                    float* scores,
                    float* out);
void ConvertToF16Avx2(const float* src, uint16_t* dst, int64_t n);

namespace {

bool UseAvx2() { return ActiveIsa() == "avx2"; }

void AttendHeadScalar(const float* q,
                      const uint16_t* const* k,
                      const uint16_t* const* v,
                      int n,
                      int head_dim,
                      float scale,
                      float* scores,
                      float* out) {
  float max_score = -INFINITY;
  for (int j = 0; j < n; ++j) {
    float s = 0;
    for (int d = 0; d < head_dim; ++d) s += q[d] * Fp16ToFp32(k[j][d]);
    scores[j] = s * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float sum = 0;
  for (int j = 0; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  for (int d = 0; d < head_dim; ++d) out[d] = 0;
  for (int j = 0; j < n; ++j) {
    const float p = scores[j];
    for (int d = 0; d < head_dim; ++d) out[d] += p * Fp16ToFp32(v[j][d]);
  }
  const float inv = 1.0f / sum;
  for (int d = 0; d < head_dim; ++d) out[d] *= inv;
}

}  // namespace

void AttendHead(const float* q,
                const uint16_t* const* k,
                const uint16_t* const* v,
                int n,
                int head_dim,
                float scale,
                float* scores,
                float* out) {
  if (UseAvx2() && head_dim % 8 == 0) {
    AttendHeadAvx2(q, k, v, n, head_dim, scale, scores, out);
  } else {
    AttendHeadScalar(q, k, v, n, head_dim, scale, scores, out);
  }
}

void AttendHeadRef(const float* q,
                   const uint16_t* const* k,
                   const uint16_t* const* v,
                   int n,
                   int head_dim,
                   float scale,
                   float* out) {
  std::vector<double> s(n);
  double max_score = -INFINITY;
  for (int j = 0; j < n; ++j) {
    double acc = 0;
    for (int d = 0; d < head_dim; ++d) acc += double{q[d]} * Fp16ToFp32(k[j][d]);
    s[j] = acc * scale;
    max_score = std::max(max_score, s[j]);
  }
  double sum = 0;
  for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - max_score));
  for (int d = 0; d < head_dim; ++d) {
    double acc = 0;
    for (int j = 0; j < n; ++j) acc += s[j] * Fp16ToFp32(v[j][d]);
    out[d] = static_cast<float>(acc / sum);
  }
}

void ConvertToF16(const float* src, uint16_t* dst, int64_t n) {
  if (UseAvx2()) {
    ConvertToF16Avx2(src, dst, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = Fp32ToFp16(src[i]);
}

}  // namespace strata::kernels
