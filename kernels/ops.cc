// Row-wise operators. Plain C++ written so that the compiler's vectorizer keeps each element's
// arithmetic unchanged (no reassociation, no FMA contraction: -ffp-contract=off), so results are
// the same for every batch composition and thread count.
#include "kernels/ops.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/logging.h"
#include "kernels/quant.h"

namespace strata::kernels {
namespace {

constexpr int kLanes = 16;  // RmsNorm's partial sums; SwiGlu's chunk

// exp(x) to ~1 ulp for x in [-87, 88] (clamped outside): 2^n * p(r), r = x - n ln2, |r| <= ln2/2,
// p a degree-6 Taylor polynomial. Branch-free so loops over it vectorize.
inline float Exp(float x) {
  x = x < 88.0f ? x : 88.0f;
  x = x > -87.0f ? x : -87.0f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693145751953125f;   // ln 2 split in a high part exact in n * hi ...
  r = r - n * 1.428606765330187045e-06f;  // ... and the remainder
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return p * scale;
}

inline float SwiGluOne(float g, float u) { return g / (1.0f + Exp(-g)) * u; }

// Angles follow GGML's rope cache: theta_j = freq_scale * (p * s^j) with s = base^(-2/rot_dim)
// and p * s^j built by repeated f32 multiplication, so values track llama.cpp's closely.
//
// cos/sin per position are memoized per thread (direct-mapped on the position): a decode step
// rotates q and k of every layer at the same position, so the trigonometry runs once per token.
struct RopeAngles {
  int32_t pos = 0;
  int rot_dim = 0;  // 0: empty slot
  float base = 0.0f, freq_scale = 0.0f;
  std::vector<float> cs, sn;  // rot_dim / 2 each
};

const RopeAngles& Angles(int32_t pos, const RopeParams& params) {
  static thread_local std::array<RopeAngles, 64> cache;
  RopeAngles& e = cache[static_cast<uint32_t>(pos) % cache.size()];
  if (e.rot_dim == params.rot_dim && e.pos == pos && e.base == params.base &&
      e.freq_scale == params.freq_scale) {
    return e;
  }
  const int half = params.rot_dim / 2;
  e.pos = pos;
  e.rot_dim = params.rot_dim;
  e.base = params.base;
  e.freq_scale = params.freq_scale;
  e.cs.resize(half);
  e.sn.resize(half);
  const float theta_scale = std::pow(params.base, -2.0f / static_cast<float>(params.rot_dim));
  float theta = static_cast<float>(pos);
  for (int j = 0; j < half; ++j) {
    const float angle = params.freq_scale * theta;
    e.cs[j] = std::cos(angle);
    e.sn[j] = std::sin(angle);
    theta *= theta_scale;
  }
  return e;
}

}  // namespace

void GetRow(const Tensor& w, int64_t index, float* out) {
  STRATA_CHECK(index >= 0 && index < w.rows()) << "GetRow " << index << " of " << w.ShapeString();
  DequantizeRowRef(w.dtype, w.row(index), out, w.cols());
}

void RmsNorm(const float* x, const float* weight, int64_t m, int64_t n, float eps, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * n;
    float* yr = out + i * n;
    float lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += xr[j + l] * xr[j + l];
    }
    for (int l = 0; j < n; ++j, ++l) lanes[l] += xr[j] * xr[j];
    for (int width = kLanes / 2; width > 0; width /= 2) {
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    const float scale = 1.0f / std::sqrt(lanes[0] / static_cast<float>(n) + eps);
    for (j = 0; j < n; ++j) yr[j] = (xr[j] * scale) * weight[j];
  }
}

void Rope(float* x, const int32_t* positions, int64_t m, int n_heads, const RopeParams& params) {
  const int hd = params.head_dim, rd = params.rot_dim, half = rd / 2;
  STRATA_CHECK(rd % 2 == 0 && rd > 0 && rd <= hd) << "Rope: rot_dim " << rd << " head_dim " << hd;
  for (int64_t i = 0; i < m; ++i) {
    const RopeAngles& angles = Angles(positions[i], params);
    const float* cs = angles.cs.data();
    const float* sn = angles.sn.data();
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (i * n_heads + h) * hd;
      for (int j = 0; j < half; ++j) {
        const int a = params.neox ? j : 2 * j, b = params.neox ? j + half : 2 * j + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * cs[j] - x1 * sn[j];
        v[b] = x0 * sn[j] + x1 * cs[j];
      }
    }
  }
}

void SwiGlu(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {  // fixed-width chunks: the compiler vectorizes these
    for (int l = 0; l < kLanes; ++l) out[i + l] = SwiGluOne(gate[i + l], up[i + l]);
  }
  for (; i < n; ++i) out[i] = SwiGluOne(gate[i], up[i]);
}

}  // namespace strata::kernels
