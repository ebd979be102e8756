#include "kernels/cuda/device.h"

#include <utility>

#include "common/strings.h"

namespace strata::kernels::cuda {

absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg = StrCat(what, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorInitializationError:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<int> DeviceCount() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it: the runtime keeps no sticky state for this one
    return absl::UnavailableError(
        StrCat("no usable CUDA device: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
  }
  if (n == 0) return absl::UnavailableError("no CUDA device found");
  return n;
}

absl::Status UseDevice(int device) {
  ASSIGN_OR_RETURN(int n, DeviceCount());
  if (device < 0 || device >= n) {
    return absl::InvalidArgumentError(
        StrCat("cuda:", device, " does not exist (", n, " CUDA device", n == 1 ? "" : "s", ")"));
  }
  return CudaStatus(cudaSetDevice(device), StrCat("cudaSetDevice(", device, ")"));
}

absl::StatusOr<DeviceInfo> GetDeviceInfo(int device) {
  RETURN_IF_ERROR(UseDevice(device));
  cudaDeviceProp prop{};
  STRATA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceInfo info;
  info.index = device;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.sm_count = prop.multiProcessorCount;
  info.total_bytes = prop.totalGlobalMem;
  info.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) == cudaSuccess) {
    info.peak_gbps = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  }
  cudaGetLastError();
  return info;
}

// --- DeviceBuffer ---

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(int device, size_t bytes) {
  DeviceBuffer b;
  RETURN_IF_ERROR(b.Reserve(device, bytes));
  return b;
}

DeviceBuffer::~DeviceBuffer() { Reset(); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    device_ = o.device_;
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (data_ != nullptr) {
    int current = 0;
    cudaGetDevice(&current);
    cudaSetDevice(device_);
    cudaFree(data_);
    cudaSetDevice(current);
  }
  data_ = nullptr;
  size_ = 0;
}

absl::Status DeviceBuffer::Reserve(int device, size_t bytes) {
  if (bytes <= size_ && device == device_ && data_ != nullptr) return absl::OkStatus();
  Reset();
  device_ = device;
  STRATA_CUDA_RETURN_IF_ERROR(cudaSetDevice(device), "cudaSetDevice");
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  const cudaError_t err = cudaMalloc(&data_, rounded);
  if (err != cudaSuccess) {
    data_ = nullptr;
    cudaGetLastError();
    return CudaStatus(err, StrCat("cudaMalloc of ", rounded >> 20, " MiB on cuda:", device));
  }
  size_ = rounded;
  return absl::OkStatus();
}

// --- PinnedBuffer ---

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::Status PinnedBuffer::Reserve(size_t bytes) {
  if (bytes <= size_ && data_ != nullptr) return absl::OkStatus();
  if (data_ != nullptr) cudaFreeHost(data_);
  data_ = nullptr;
  size_ = 0;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096;
  const cudaError_t err = cudaMallocHost(&data_, rounded);
  if (err != cudaSuccess) {
    data_ = nullptr;
    cudaGetLastError();
    return CudaStatus(err, StrCat("cudaMallocHost of ", rounded >> 20, " MiB"));
  }
  size_ = rounded;
  return absl::OkStatus();
}

// --- Stream / Event ---

absl::StatusOr<Stream> Stream::Create(int device) {
  RETURN_IF_ERROR(UseDevice(device));
  Stream s;
  s.device_ = device;
  STRATA_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&s.stream_), "cudaStreamCreate");
  return s;
}

Stream::~Stream() {
  if (stream_ != nullptr) {
    cudaSetDevice(device_);
    cudaStreamDestroy(stream_);
  }
}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(o.stream_, nullptr);
    device_ = o.device_;
  }
  return *this;
}

absl::Status Stream::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

absl::StatusOr<Event> Event::Create(int device, bool timing) {
  RETURN_IF_ERROR(UseDevice(device));
  Event e;
  e.device_ = device;
  STRATA_CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&e.event_, timing ? cudaEventDefault : cudaEventDisableTiming),
      "cudaEventCreate");
  return e;
}

Event::~Event() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(o.event_, nullptr);
    device_ = o.device_;
  }
  return *this;
}

}  // namespace strata::kernels::cuda
