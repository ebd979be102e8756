// Element types of tensors. Values equal GGML's type ids, so GGUF tensor infos map directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata::kernels {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ4_K = 12,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct DTypeInfo {
  std::string_view name;  // GGML spelling: "f32", "q4_1", ...
  int block_size;         // elements per block (1 for plain floats)
  int block_bytes;        // bytes per block
  bool quantized;
};

// Information for a supported dtype.
const DTypeInfo& Info(DType dtype);

// Maps a GGML type id to a supported DType; INVALID_ARGUMENT for ids this build does not handle.
absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type);

// A weight dtype by its GGML spelling ("f16", "q4_0", "q4_K", ...); INVALID_ARGUMENT listing the
// choices otherwise. Activation-only formats (q8_1, q8_K) are not weight dtypes.
absl::StatusOr<DType> WeightDTypeFromName(std::string_view name);

// Bytes taken by `n` consecutive elements; `n` must be a multiple of the block size.
inline size_t RowBytes(DType dtype, int64_t n) {
  const DTypeInfo& info = Info(dtype);
  return static_cast<size_t>(n / info.block_size) * static_cast<size_t>(info.block_bytes);
}

}  // namespace strata::kernels
