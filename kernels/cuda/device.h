// CUDA runtime plumbing: error conversion, device discovery and RAII owners for device memory,
// pinned host memory, streams and events. Nothing here touches the driver API (libcuda), so
// binaries linking it start, and report a clear status, on machines without a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status.h"

namespace strata::kernels::cuda {

// OK for cudaSuccess; otherwise INTERNAL (RESOURCE_EXHAUSTED for out-of-memory, UNAVAILABLE when
// there is no usable device or driver) with "<what>: <cuda error name>: <description>".
absl::Status CudaStatus(cudaError_t err, std::string_view what);

#define STRATA_CUDA_RETURN_IF_ERROR(expr, what) \
  RETURN_IF_ERROR(::strata::kernels::cuda::CudaStatus((expr), (what)))

// Number of CUDA devices. UNAVAILABLE (with the runtime's reason) when there is no driver or no
// device, so callers and tests can fall back or skip.
absl::StatusOr<int> DeviceCount();

// Checks `device` exists and makes it current for the calling thread.
absl::Status UseDevice(int device);

struct DeviceInfo {
  int index = 0;
  std::string name;  // "NVIDIA H100 80GB HBM3"
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0;
  size_t l2_bytes = 0;
  double peak_gbps = 0;  // 2 * memory clock * bus width / 8 (0 when the driver does not say)
};
absl::StatusOr<DeviceInfo> GetDeviceInfo(int device);

// Device memory (cudaMalloc) on one device; freed with the owner.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // RESOURCE_EXHAUSTED when the device is out of memory.
  static absl::StatusOr<DeviceBuffer> Allocate(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Grows (never shrinks) to at least `bytes`; contents are lost when it grows.
  absl::Status Reserve(int device, size_t bytes);
  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  void Reset();
  void* data_ = nullptr;
  size_t size_ = 0;
  int device_ = 0;
};

// Page-locked host memory (cudaMallocHost) for asynchronous copies; grows, never shrinks.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  absl::Status Reserve(size_t bytes);
  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// A blocking stream (ordered with the legacy default stream) on one device.
class Stream {
 public:
  Stream() = default;
  static absl::StatusOr<Stream> Create(int device);
  ~Stream();
  Stream(Stream&& o) noexcept { *this = std::move(o); }
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  absl::Status Synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

// A timing-free event for ordering and host waits.
class Event {
 public:
  Event() = default;
  static absl::StatusOr<Event> Create(int device, bool timing = false);
  ~Event();
  Event(Event&& o) noexcept { *this = std::move(o); }
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
  int device_ = 0;
};

}  // namespace strata::kernels::cuda
