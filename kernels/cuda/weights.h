// Weights on the device: GGML blocks repacked (same quantization, same values) into the
// DeviceWeightView layout of launchers.h, uploaded once into one allocation per span.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launchers.h"
#include "kernels/tensor.h"

namespace strata::kernels::cuda {

// Repacks n rows of `dtype` with k columns: row r starts at src + r * src_stride (GGML blocks).
// Writes n * DeviceRowBytes(dtype, k).{q,s,d} bytes to q, s and d (s, d may be null when unused).
void RepackRows(DType dtype,
                const uint8_t* src,
                size_t src_stride,
                int64_t n,
                int64_t k,
                uint8_t* q,
                uint8_t* s,
                uint8_t* d);

// The inverse, for tests: GGML blocks of row r of a repacked weight held in host memory.
void UnpackRow(
    DType dtype, int64_t k, const uint8_t* q, const uint8_t* s, const uint8_t* d, uint8_t* dst);

// Bump allocator over one device allocation (256-byte aligned pieces).
class DeviceArena {
 public:
  static absl::StatusOr<DeviceArena> Create(int device, size_t bytes);
  DeviceArena() = default;
  DeviceArena(DeviceArena&&) = default;
  DeviceArena& operator=(DeviceArena&&) = default;
  // FAILED_PRECONDITION when the arena is full (a sizing bug in the caller).
  absl::StatusOr<uint8_t*> Take(size_t bytes);
  int device() const { return device_; }
  size_t capacity() const { return buffer_.size(); }
  size_t used() const { return used_; }

  static size_t Round(size_t bytes) { return (bytes + 255) / 256 * 256; }

 private:
  DeviceBuffer buffer_;
  size_t used_ = 0;
  int device_ = 0;
};

// Rows [row0, row0 + rows) and columns [col0, col0 + cols) of a host weight (cols and col0 on
// block boundaries); rows/cols < 0 mean "to the end".
struct WeightSlice {
  const Tensor* tensor = nullptr;
  int64_t row0 = 0, rows = -1;
  int64_t col0 = 0, cols = -1;
};

// Arena bytes UploadWeight takes for `parts` stacked.
size_t UploadBytes(DType dtype, int64_t n, int64_t k);

// Stacks the rows of `parts` (one dtype, equal column counts) into one device weight taken from
// `arena`. INVALID_ARGUMENT for mismatched or unsupported parts.
absl::StatusOr<DeviceWeightView> UploadWeight(std::span<const WeightSlice> parts,
                                              DeviceArena& arena);

// Copies an f32 vector (or several, concatenated) to the arena.
absl::StatusOr<const float*> UploadFloats(std::span<const Tensor* const> parts, DeviceArena& arena);

}  // namespace strata::kernels::cuda
