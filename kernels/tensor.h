// Tensor: a non-owning view (data, dtype, shape, device). Buffer: owned, 64-byte aligned host
// memory. Shapes are outermost-first: a weight matrix with `rows` output features of `cols` inputs
// each has shape {rows, cols} and each row is contiguous (GGUF lists dims innermost-first; the
// loader reverses them).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>

#include "kernels/dtype.h"

namespace strata::kernels {

enum class Device { kCpu = 0, kCuda = 1 };

struct Tensor {
  static constexpr int kMaxDims = 4;

  void* data = nullptr;
  DType dtype = DType::kF32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};  // outermost first
  Device device = Device::kCpu;

  Tensor() = default;
  Tensor(void* d, DType t, std::initializer_list<int64_t> dims, Device dev = Device::kCpu)
      : data(d), dtype(t), device(dev) {
    for (int64_t v : dims) shape[ndim++] = v;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // Innermost dimension (elements per row) and the number of rows (product of the others).
  int64_t cols() const { return ndim == 0 ? 1 : shape[ndim - 1]; }
  int64_t rows() const { return ndim == 0 ? 1 : numel() / shape[ndim - 1]; }
  size_t row_bytes() const { return RowBytes(dtype, cols()); }
  size_t bytes() const { return row_bytes() * static_cast<size_t>(rows()); }

  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_bytes();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  std::string ShapeString() const;
};

// Owned, 64-byte aligned host memory, zero-initialised.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes) { Resize(bytes); }

  // Grows (never shrinks) capacity; contents are not preserved when it grows.
  void Resize(size_t bytes) {
    if (bytes <= capacity_) {
      size_ = bytes;
      return;
    }
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) std::abort();
    std::memset(p, 0, rounded);
    data_.reset(p);
    capacity_ = rounded;
    size_ = bytes;
  }
  void* data() const { return data_.get(); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_.get());
  }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace strata::kernels
