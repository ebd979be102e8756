// Hidden states on the wire: rows x width values as raw little-endian bytes in an explicit dtype.
// f32 (the default) is lossless; f16 and bf16 halve the bytes at a stated precision cost.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "strata/v1/common.pb.h"

namespace strata::transport {

// Bytes per element of a wire dtype; 0 for an unknown one.
int WireElementBytes(v1::DType dtype);

// Writes rows x width floats into `out` as `dtype`.
void EncodeRows(const float* data, int64_t rows, int64_t width, v1::DType dtype, v1::Tensor* out);

// Checks that `t` is exactly [rows, width] of a known dtype (INVALID_ARGUMENT naming the problem
// otherwise) and appends its values as f32 to `out`. Nothing is allocated before the check.
absl::Status DecodeRows(const v1::Tensor& t, int64_t rows, int64_t width, std::vector<float>* out);

}  // namespace strata::transport
