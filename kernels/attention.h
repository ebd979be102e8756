// Scaled dot-product attention of one query head over cached keys and values (f16).
//
// The caller passes the visible positions in increasing logical order; scores, the softmax sums
// and the weighted sum of values are all reduced in that order, so the result for a query depends
// only on its inputs, not on where the cache keeps them or which other rows share the batch.
#pragma once

#include <cstdint>

namespace strata::kernels {

// out[d] = sum_j softmax_j(scale * q . k_j) * v_j[d], j < n.
//   q: head_dim f32; k[j], v[j]: head_dim f16 each; scores: scratch of n floats; out: head_dim f32.
void AttendHead(const float* q,
                const uint16_t* const* k,
                const uint16_t* const* v,
                int n,
                int head_dim,
                float scale,
                float* scores,
                float* out);

// Scalar reference of the same computation, accumulating in double.
void AttendHeadRef(const float* q,
                   const uint16_t* const* k,
                   const uint16_t* const* v,
                   int n,
                   int head_dim,
                   float scale,
                   float* out);

// Converts n f32 values to f16 (round to nearest even), as stored in the KV cache.
void ConvertToF16(const float* src, uint16_t* dst, int64_t n);

}  // namespace strata::kernels
