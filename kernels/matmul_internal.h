// Internal seam between the MatMul facade (matmul.cc) and its per-ISA implementations
// (matmul_scalar.cc, matmul_avx2.cc). Not part of the public API.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace strata::kernels::internal {

// A whole product: y[i * y_stride + j] = dot(weight row j, activation row i).
struct MatMulArgs {
  const uint8_t* w;  // weight row 0
  size_t w_stride;   // bytes between weight rows
  const uint8_t* x;  // activation row 0 (quantized, or f32 for float weights)
  size_t x_stride;   // bytes between activation rows
  int64_t m;         // activation rows
  int64_t k;         // elements per row
  float* y;
  int64_t y_stride;  // floats between output rows (n)
};

// One tile of it: the weight row at w against NC activation rows starting at x, writing
// y[c * y_stride].
struct TileArgs {
  const uint8_t* w;
  const uint8_t* x;
  size_t x_stride;
  int64_t k;
  float* y;
  int64_t y_stride;
};

// One ISA's MatMul for one weight dtype.
struct MatMulKernel {
  // Bytes of one quantized activation row of k values; nullptr when x is read as f32 directly.
  size_t (*act_row_bytes)(int64_t k) = nullptr;
  // Quantizes k values of x into `act` (act_row_bytes(k) bytes, 64-byte aligned).
  void (*quantize)(const float* x, uint8_t* act, int64_t k) = nullptr;
  // Computes the outputs of weight rows [begin, end) for all m activation rows.
  void (*rows)(const MatMulArgs& args, int64_t begin, int64_t end) = nullptr;
};

// Kernels for `dtype` weights; nullptr when the dtype cannot be a MatMul weight.
const MatMulKernel* ScalarKernel(DType dtype);
// Same for AVX2+FMA+F16C; nullptr also when this build has no AVX2 kernels.
const MatMulKernel* Avx2Kernel(DType dtype);

constexpr int64_t kColBlock = 64;  // activation rows kept hot while a chunk of weights streams

// The row loop shared by the ISAs, instantiated inside each ISA's file so the tiles inline.
// T::Run<NC>(tile) computes one weight row against NC <= 4 activation rows and must give every
// element the same arithmetic whatever NC is: that, and this loop never splitting a dot product,
// is what makes MatMul batch-invariant. Prefill (m > 1) sweeps blocks of kColBlock activation rows
// so they stay in cache while the weight rows stream past.
template <typename T>
void RowsLoop(const MatMulArgs& a, int64_t begin, int64_t end) {
  auto tile = [&](int64_t r, int64_t c) {
    return TileArgs{a.w + r * a.w_stride,
                    a.x + c * a.x_stride,
                    a.x_stride,
                    a.k,
                    a.y + c * a.y_stride + r,
                    a.y_stride};
  };
  if (a.m == 1) {
    for (int64_t r = begin; r < end; ++r) T::template Run<1>(tile(r, 0));
    return;
  }
  for (int64_t c0 = 0; c0 < a.m; c0 += kColBlock) {
    const int64_t c1 = std::min(a.m, c0 + kColBlock);
    for (int64_t r = begin; r < end; ++r) {
      int64_t c = c0;
      for (; c + 4 <= c1; c += 4) T::template Run<4>(tile(r, c));
      switch (c1 - c) {
        case 3:
          T::template Run<3>(tile(r, c));
          break;
        case 2:
          T::template Run<2>(tile(r, c));
          break;
        case 1:
          T::template Run<1>(tile(r, c));
          break;
        default:
          break;
      }
    }
  }
}

// A tile made of independent single dot products (for formats without a multi-row kernel).
template <float (*Dot)(const uint8_t* w, const uint8_t* x, int64_t k)>
struct DotTile {
  template <int NC>
  static void Run(const TileArgs& a) {
    for (int c = 0; c < NC; ++c) a.y[c * a.y_stride] = Dot(a.w, a.x + c * a.x_stride, a.k);
  }
};

}  // namespace strata::kernels::internal
