// Helpers for GPU tests: skipping without a device, and typed device vectors.
#pragma once

#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/dtype.h"

namespace strata::kernels {
// Readable test names for parameters of type DType.
inline void PrintTo(DType t, std::ostream* os) { *os << Info(t).name; }
}  // namespace strata::kernels

namespace strata::testkit {

// GTEST_SKIP()s the current test when no CUDA device is usable (no driver, no GPU).
#define STRATA_SKIP_WITHOUT_GPU()                                            \
  do {                                                                       \
    auto _gpus = ::strata::kernels::cuda::DeviceCount();                     \
    if (!_gpus.ok()) GTEST_SKIP() << "no GPU: " << _gpus.status().message(); \
    ASSERT_TRUE(::strata::kernels::cuda::UseDevice(0).ok());                 \
  } while (0)

// A device copy of a host vector (device 0).
template <typename T>
class DeviceVec {
 public:
  DeviceVec() = default;
  explicit DeviceVec(size_t n) { Resize(n); }
  explicit DeviceVec(const std::vector<T>& host) { Upload(host); }

  void Resize(size_t n) {
    n_ = n;
    EXPECT_TRUE(buf_.Reserve(0, std::max<size_t>(1, n) * sizeof(T)).ok());
    EXPECT_EQ(cudaMemset(buf_.data(), 0, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
  }
  void Upload(const std::vector<T>& host) {
    Resize(host.size());
    EXPECT_EQ(cudaMemcpy(buf_.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), buf_.data(), n_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return host;
  }
  T* data() const { return buf_.as<T>(); }
  size_t size() const { return n_; }

 private:
  kernels::cuda::DeviceBuffer buf_;
  size_t n_ = 0;
};

}  // namespace strata::testkit
