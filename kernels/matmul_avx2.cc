// AVX2 + FMA + F16C MatMul kernels (this file alone is compiled with -mavx2 -mfma -mf16c and only
// called after a run-time CPU check).
//
// Batch invariance: a tile is one weight row against NC <= 4 activation rows (1 when decoding). It
// keeps separate accumulators per activation row and applies to each the same instruction sequence,
// block by block in order, whatever NC is; the final horizontal sums are fixed too. So an output
// element is bit-identical whether it was computed alone or inside a prefill tile.
//
// Decode walks one weight row at a time: on the development machine (Zen 4) interleaving 4 rows
// gained nothing and interleaving 2 rows cut the DRAM streaming rate by 3x.
#include <immintrin.h>

#include <cstring>

#include "kernels/matmul_internal.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace strata::kernels::internal {
namespace {

inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline __m128i LoadU128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m256i LoadU256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// Sum of the 8 lanes in a fixed order: (lane i + lane i+4), then pairs, then the last two.
inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int HSumI32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}
inline __m256 ZeroExtend(__m128 v) { return _mm256_set_m128(_mm_setzero_ps(), v); }
inline __m256 LoadScales(const uint8_t* sc, int64_t index) {
  return _mm256_loadu_ps(reinterpret_cast<const float*>(sc) + index);
}

// ---------------------------------------------------------------------------------------------
// Activations for the 32-wide weight formats, nb = k / 32 blocks per row:
//   qs   nb * 32 int8 codes. For Q4_0/Q4_1 weights each block pair (2p, 2p+1) is stored as
//        [2p: 0-15][2p+1: 0-15][2p: 16-31][2p+1: 16-31], matching how one 32-byte load of two
//        weight blocks' nibbles unpacks; an odd last block stays in natural order.
//   sc   (nb + 1) x 4 floats {d, s, 0, 0}: the fp16-rounded scale and (Q8_1 only) the
//        fp16-rounded d * sum(q), as f32. The extra zero slot lets the last block use 8-wide loads.
//   corr (nb + 1) x 4 int32 {8 * sum(q), 0, 0, 0} (Q4_0 weights only: their codes are q + 8).
// The codes and scales are exactly those QuantizeRowRef writes for Q8_0 / Q8_1.
enum class Act32Kind { kForQ4_0, kForQ4_1, kForQ8_0 };

struct Act32Layout {
  explicit Act32Layout(int64_t k) : nb(k / kQK) {}
  size_t sc() const { return static_cast<size_t>(nb) * kQK; }
  size_t corr() const { return sc() + static_cast<size_t>(nb + 1) * 16; }
  size_t bytes() const { return corr() + static_cast<size_t>(nb + 1) * 16; }
  int64_t nb;
};

size_t Act32Bytes(int64_t k) { return Act32Layout(k).bytes(); }

template <Act32Kind K>
void QuantizeAct32(const float* x, uint8_t* act, int64_t k) {
  const Act32Layout lay(k);
  auto* qs = reinterpret_cast<int8_t*>(act);
  auto* sc = reinterpret_cast<float*>(act + lay.sc());
  auto* corr = reinterpret_cast<int32_t*>(act + lay.corr());
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i unscramble = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int64_t paired = (K == Act32Kind::kForQ8_0) ? 0 : lay.nb / 2 * 2;
  for (int64_t b = 0; b < lay.nb; ++b) {
    __m256 v[4];
    for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(x + 32 * b + 8 * j);
    __m256 mx = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
    mx = _mm256_max_ps(mx,
                       _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f;  // same arithmetic as QuantizeRowRef
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      q[j] = _mm256_cvtps_epi32(
          _mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const int isum =
        HSumI32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    packed = _mm256_permutevar8x32_epi32(packed, unscramble);
    if (b < paired) {
      int8_t* base = qs + 64 * (b / 2) + 16 * (b & 1);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(base), _mm256_castsi256_si128(packed));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 32), _mm256_extracti128_si256(packed, 1));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + 32 * b), packed);
    }
    sc[4 * b] = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
    sc[4 * b + 1] =
        K == Act32Kind::kForQ4_1
            ? _cvtsh_ss(_cvtss_sh(d * static_cast<float>(isum), _MM_FROUND_TO_NEAREST_INT))
            : 0.0f;
    sc[4 * b + 2] = sc[4 * b + 3] = 0.0f;
    corr[4 * b] = K == Act32Kind::kForQ4_0 ? 8 * isum : 0;
    corr[4 * b + 1] = corr[4 * b + 2] = corr[4 * b + 3] = 0;
  }
  std::memset(sc + 4 * lay.nb, 0, 16);
  std::memset(corr + 4 * lay.nb, 0, 16);
}

// ---------------------------------------------------------------------------------------------
// Q4_1 x Q8_1. Per block: acc += (d_w d_x) * sum(q_w q_x) lane-wise, accm += m_w s_x.
// Two blocks per step: their nibbles fill one 256-bit vector, and their scales one 8-float vector
// laid out [d0 m0 0 0 | d1 m1 0 0], so one multiply forms both blocks' d_w d_x and m_w s_x.
struct Q4_1Tile {
  static constexpr int kBlockBytes = sizeof(BlockQ4_1);

  template <int NC>
  static void Run(const TileArgs& a) {
    const Act32Layout lay(a.k);
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[NC], accm[NC];
    for (int c = 0; c < NC; ++c) acc[c] = accm[c] = _mm256_setzero_ps();
    for (int64_t p = 0; p < lay.nb / 2; ++p) {
      const uint8_t* blk = a.w + 2 * kBlockBytes * p;
      __m128i dm = _mm_cvtsi32_si128(static_cast<int>(Load32(blk)));
      dm = _mm_insert_epi32(dm, static_cast<int>(Load32(blk + kBlockBytes)), 2);
      const __m256 wdm = _mm256_cvtph_ps(dm);
      const __m256i v = _mm256_set_m128i(LoadU128(blk + kBlockBytes + 4), LoadU128(blk + 4));
      const __m256i lo = _mm256_and_si256(v, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const uint8_t* xa = a.x + c * a.x_stride;
        const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, LoadU256(xa + 64 * p)),
                                             _mm256_maddubs_epi16(hi, LoadU256(xa + 64 * p + 32)));
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        const __m256 s = _mm256_mul_ps(wdm, LoadScales(xa + lay.sc(), 8 * p));
        accm[c] = _mm256_add_ps(accm[c], s);
        acc[c] = _mm256_fmadd_ps(_mm256_shuffle_ps(s, s, 0), f, acc[c]);
      }
    }
    if (lay.nb & 1) {  // last block alone: the same operations on the low 128-bit half
      const int64_t b = lay.nb - 1;
      const uint8_t* blk = a.w + kBlockBytes * b;
      const __m128i m4h = _mm_set1_epi8(0x0F), onesh = _mm_set1_epi16(1);
      const __m256 wdm = _mm256_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(Load32(blk))));
      const __m128i v = LoadU128(blk + 4);
      const __m128i lo = _mm_and_si128(v, m4h), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4h);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const uint8_t* xa = a.x + c * a.x_stride;
        const __m128i p16 = _mm_add_epi16(_mm_maddubs_epi16(lo, LoadU128(xa + 32 * b)),
                                          _mm_maddubs_epi16(hi, LoadU128(xa + 32 * b + 16)));
        const __m256 f = ZeroExtend(_mm_cvtepi32_ps(_mm_madd_epi16(p16, onesh)));
        const __m256 s = _mm256_mul_ps(wdm, LoadScales(xa + lay.sc(), 4 * b));
        accm[c] = _mm256_add_ps(accm[c], s);
        acc[c] = _mm256_fmadd_ps(_mm256_shuffle_ps(s, s, 0), f, acc[c]);
      }
    }
    for (int c = 0; c < NC; ++c) {
      const __m128 m =
          _mm_add_ps(_mm256_castps256_ps128(accm[c]), _mm256_extractf128_ps(accm[c], 1));
      a.y[c * a.y_stride] = HSum(acc[c]) + _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1));
    }
  }
};

// Q4_0 x Q8_0: like Q4_1 with unsigned codes; the -8 offset is removed exactly in integers with
// the activation's per-block correction 8 * sum(q_x).
struct Q4_0Tile {
  static constexpr int kBlockBytes = sizeof(BlockQ4_0);

  template <int NC>
  static void Run(const TileArgs& a) {
    const Act32Layout lay(a.k);
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t p = 0; p < lay.nb / 2; ++p) {
      const uint8_t* blk = a.w + 2 * kBlockBytes * p;
      __m128i dd = _mm_cvtsi32_si128(Load16(blk));
      dd = _mm_insert_epi16(dd, Load16(blk + kBlockBytes), 4);
      const __m256 wd = _mm256_cvtph_ps(dd);  // [d0 0 0 0 | d1 0 0 0]
      const __m256i v = _mm256_set_m128i(LoadU128(blk + kBlockBytes + 2), LoadU128(blk + 2));
      const __m256i lo = _mm256_and_si256(v, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const uint8_t* xa = a.x + c * a.x_stride;
        const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, LoadU256(xa + 64 * p)),
                                             _mm256_maddubs_epi16(hi, LoadU256(xa + 64 * p + 32)));
        const __m256i i32 =
            _mm256_sub_epi32(_mm256_madd_epi16(p16, ones), LoadU256(xa + lay.corr() + 32 * p));
        const __m256 s = _mm256_mul_ps(wd, LoadScales(xa + lay.sc(), 8 * p));
        acc[c] = _mm256_fmadd_ps(_mm256_shuffle_ps(s, s, 0), _mm256_cvtepi32_ps(i32), acc[c]);
      }
    }
    if (lay.nb & 1) {
      const int64_t b = lay.nb - 1;
      const uint8_t* blk = a.w + kBlockBytes * b;
      const __m128i m4h = _mm_set1_epi8(0x0F), onesh = _mm_set1_epi16(1);
      const __m256 wd = _mm256_cvtph_ps(_mm_cvtsi32_si128(Load16(blk)));
      const __m128i v = LoadU128(blk + 2);
      const __m128i lo = _mm_and_si128(v, m4h), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4h);
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const uint8_t* xa = a.x + c * a.x_stride;
        const __m128i p16 = _mm_add_epi16(_mm_maddubs_epi16(lo, LoadU128(xa + 32 * b)),
                                          _mm_maddubs_epi16(hi, LoadU128(xa + 32 * b + 16)));
        const __m128i i32 =
            _mm_sub_epi32(_mm_madd_epi16(p16, onesh), LoadU128(xa + lay.corr() + 16 * b));
        const __m256 s = _mm256_mul_ps(wd, LoadScales(xa + lay.sc(), 4 * b));
        acc[c] =
            _mm256_fmadd_ps(_mm256_shuffle_ps(s, s, 0), ZeroExtend(_mm_cvtepi32_ps(i32)), acc[c]);
      }
    }
    for (int c = 0; c < NC; ++c) a.y[c * a.y_stride] = HSum(acc[c]);
  }
};

// Q8_0 x Q8_0: signed x signed via |w| * (x with w's sign), one block per step. Even and odd
// blocks go to two accumulators so consecutive FMAs do not wait on each other.
struct Q8_0Tile {
  static constexpr int kBlockBytes = sizeof(BlockQ8_0);

  template <int NC>
  static inline void Step(const TileArgs& a, const Act32Layout& lay, int64_t b, __m256* acc) {
    const __m256i ones = _mm256_set1_epi16(1);
    const uint8_t* blk = a.w + kBlockBytes * b;
    const __m128 wd = _mm_cvtph_ps(_mm_cvtsi32_si128(Load16(blk)));
    const __m256i wq = LoadU256(blk + 2);
    const __m256i aw = _mm256_sign_epi8(wq, wq);
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const uint8_t* xa = a.x + c * a.x_stride;
      const __m256i sx = _mm256_sign_epi8(LoadU256(xa + 32 * b), wq);
      const __m256i i32 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
      const __m128 s =
          _mm_mul_ss(wd, _mm_load_ss(reinterpret_cast<const float*>(xa + lay.sc()) + 4 * b));
      acc[c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), _mm256_cvtepi32_ps(i32), acc[c]);
    }
  }

  template <int NC>
  static void Run(const TileArgs& a) {
    const Act32Layout lay(a.k);
    __m256 even[NC], odd[NC];
    for (int c = 0; c < NC; ++c) even[c] = odd[c] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= lay.nb; b += 2) {
      Step<NC>(a, lay, b, even);
      Step<NC>(a, lay, b + 1, odd);
    }
    if (b < lay.nb) Step<NC>(a, lay, b, even);
    for (int c = 0; c < NC; ++c) a.y[c * a.y_stride] = HSum(_mm256_add_ps(even[c], odd[c]));
  }
};

// ---------------------------------------------------------------------------------------------
// K-quants against Q8_K activations (the reference BlockQ8_K layout), one element at a time.

// Q4_K: per super-block, 4 chunks of 64 codes (low nibbles = sub-block 2j, high = 2j+1); the
// 6-bit sub-block scales multiply the 16-bit pair sums, the mins use the activation's bsums.
float DotQ4_K(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ4_K*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_K*>(xp);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float min_sum = 0.0f;
  for (int64_t b = 0; b < k / kQKK; ++b) {
    uint8_t sc[8], mn[8];
    UnpackQ4KScales(w[b].scales, sc, mn);
    int imin = 0;
    for (int j = 0; j < 8; ++j) imin += mn[j] * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i q = LoadU256(w[b].qs + 32 * j);
      const __m256i lo = _mm256_and_si256(q, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, LoadU256(x[b].qs + 64 * j)),
                                            _mm256_set1_epi16(sc[2 * j]));
      const __m256i phi =
          _mm256_madd_epi16(_mm256_maddubs_epi16(hi, LoadU256(x[b].qs + 64 * j + 32)),
                            _mm256_set1_epi16(sc[2 * j + 1]));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
    }
    const float d = _cvtsh_ss(w[b].d) * x[b].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    min_sum += _cvtsh_ss(w[b].dmin) * x[b].d * static_cast<float>(imin);
  }
  return HSum(acc) - min_sum;
}

// Q6_K: per half of 128, one 32-byte load of qh and two of ql give the four 32-code vectors; codes
// are used unsigned (0..63) and 32 * scale * bsum is subtracted in integers.
float DotQ6_K(const uint8_t* wp, const uint8_t* xp, int64_t k) {
  const auto* w = reinterpret_cast<const BlockQ6_K*>(wp);
  const auto* x = reinterpret_cast<const BlockQ8_K*>(xp);
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < k / kQKK; ++b) {
    const __m128i sc8 = LoadU128(w[b].scales);
    // Offset term: 32 * sum_s scale_s * bsum_s, 8 lanes of pairs.
    const __m256i offset =
        _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), LoadU256(x[b].bsums)), 5);
    __m256i sumi = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = LoadU256(w[b].qh + 32 * h);
      const __m256i ql0 = LoadU256(w[b].ql + 64 * h), ql1 = LoadU256(w[b].ql + 64 * h + 32);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4),
                          _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
      };
      for (int j = 0; j < 4; ++j) {  // codes 128h + 32j .. +31 use scales 8h + 2j and 8h + 2j + 1
        const int s0 = w[b].scales[8 * h + 2 * j], s1 = w[b].scales[8 * h + 2 * j + 1];
        const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(s1)),
                                               _mm_set1_epi16(static_cast<int16_t>(s0)));
        const __m256i p16 = _mm256_maddubs_epi16(q[j], LoadU256(x[b].qs + 128 * h + 32 * j));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scale));
      }
    }
    sumi = _mm256_sub_epi32(sumi, offset);
    const float d = _cvtsh_ss(w[b].d) * x[b].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return HSum(acc);
}

// ---------------------------------------------------------------------------------------------
// F32 / F16 / BF16 weights against f32 activations: four 8-wide FMA accumulators over 32-element
// steps, then 8-element steps and a zero-padded tail into the first, then a fixed reduction.
template <DType T>
inline __m256 Load8(const uint8_t* w) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w));
  } else if constexpr (T == DType::kF16) {
    return _mm256_cvtph_ps(LoadU128(w));
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(LoadU128(w)), 16));
  }
}

template <DType T>
float DotFloat(const uint8_t* w, const uint8_t* xp, int64_t k) {
  constexpr int kEs = T == DType::kF32 ? 4 : 2;
  const auto* x = reinterpret_cast<const float*>(xp);
  __m256 acc[4] = {
      _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    for (int j = 0; j < 4; ++j) {
      acc[j] =
          _mm256_fmadd_ps(Load8<T>(w + kEs * (i + 8 * j)), _mm256_loadu_ps(x + i + 8 * j), acc[j]);
    }
  }
  for (; i + 8 <= k; i += 8)
    acc[0] = _mm256_fmadd_ps(Load8<T>(w + kEs * i), _mm256_loadu_ps(x + i), acc[0]);
  if (i < k) {
    alignas(32) uint8_t wt[32] = {};
    alignas(32) float xt[8] = {};
    std::memcpy(wt, w + kEs * i, kEs * (k - i));
    std::memcpy(xt, x + i, 4 * (k - i));
    acc[0] = _mm256_fmadd_ps(Load8<T>(wt), _mm256_load_ps(xt), acc[0]);
  }
  return HSum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

// ---------------------------------------------------------------------------------------------
// Tile dispatch and kernel tables.

size_t Q8KBytes(int64_t k) { return RowBytes(DType::kQ8_K, k); }
void QuantizeQ8K(const float* x, uint8_t* act, int64_t k) {
  QuantizeRowRef(DType::kQ8_K, x, act, k);
}

template <typename T, Act32Kind K>
constexpr MatMulKernel Block32Kernel() {
  MatMulKernel kern;
  kern.act_row_bytes = &Act32Bytes;
  kern.quantize = &QuantizeAct32<K>;
  kern.rows = &RowsLoop<T>;
  return kern;
}
template <float (*Dot)(const uint8_t*, const uint8_t*, int64_t), bool kQ8K>
constexpr MatMulKernel SimpleKernel() {
  MatMulKernel kern;
  if (kQ8K) {
    kern.act_row_bytes = &Q8KBytes;
    kern.quantize = &QuantizeQ8K;
  }
  kern.rows = &RowsLoop<DotTile<Dot>>;
  return kern;
}

constexpr MatMulKernel kQ4_0 = Block32Kernel<Q4_0Tile, Act32Kind::kForQ4_0>();
constexpr MatMulKernel kQ4_1 = Block32Kernel<Q4_1Tile, Act32Kind::kForQ4_1>();
constexpr MatMulKernel kQ8_0 = Block32Kernel<Q8_0Tile, Act32Kind::kForQ8_0>();
constexpr MatMulKernel kQ4_K = SimpleKernel<DotQ4_K, true>();
constexpr MatMulKernel kQ6_K = SimpleKernel<DotQ6_K, true>();
constexpr MatMulKernel kF32 = SimpleKernel<DotFloat<DType::kF32>, false>();
constexpr MatMulKernel kF16 = SimpleKernel<DotFloat<DType::kF16>, false>();
constexpr MatMulKernel kBF16 = SimpleKernel<DotFloat<DType::kBF16>, false>();

}  // namespace

const MatMulKernel* Avx2Kernel(DType dtype) {
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
