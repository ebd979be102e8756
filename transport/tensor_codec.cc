#include "transport/tensor_codec.h"

#include <cstring>

#include "common/strings.h"
#include "kernels/quant.h"

namespace strata::transport {

int WireElementBytes(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return 4;
    case v1::DTYPE_F16:
      return 2;
    case v1::DTYPE_BF16:
      return 2;
    default:
      return 0;
  }
}

void EncodeRows(const float* data, int64_t rows, int64_t width, v1::DType dtype, v1::Tensor* out) {
  if (WireElementBytes(dtype) == 0) dtype = v1::DTYPE_F32;
  out->set_dtype(dtype);
  out->clear_shape();
  out->add_shape(rows);
  out->add_shape(width);
  const int64_t n = rows * width;
  std::string* bytes = out->mutable_data();
  bytes->resize(static_cast<size_t>(n) * WireElementBytes(dtype));
  if (dtype == v1::DTYPE_F32) {
    std::memcpy(bytes->data(), data, bytes->size());
    return;
  }
  uint16_t* dst = reinterpret_cast<uint16_t*>(bytes->data());
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h =
        dtype == v1::DTYPE_F16 ? kernels::Fp32ToFp16(data[i]) : kernels::Fp32ToBf16(data[i]);
    std::memcpy(dst + i, &h, 2);
  }
}

absl::Status DecodeRows(const v1::Tensor& t, int64_t rows, int64_t width, std::vector<float>* out) {
  const int elem = WireElementBytes(t.dtype());
  if (elem == 0) {
    return absl::InvalidArgumentError(StrCat("unknown tensor dtype ", static_cast<int>(t.dtype())));
  }
  if (t.shape_size() != 2 || t.shape(0) != rows || t.shape(1) != width) {
    std::string shape = "[";
    for (int i = 0; i < t.shape_size(); ++i) shape += StrCat(i ? ", " : "", t.shape(i));
    return absl::InvalidArgumentError(
        StrCat("hidden states have shape ", shape, "], expected [", rows, ", ", width, "]"));
  }
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(width);
  if (t.data().size() != n * elem) {
    return absl::InvalidArgumentError(
        StrCat("hidden states carry ", t.data().size(), " bytes, shape and dtype need ", n * elem));
  }
  const size_t base = out->size();
  out->resize(base + n);
  float* dst = out->data() + base;
  if (t.dtype() == v1::DTYPE_F32) {
    std::memcpy(dst, t.data().data(), n * 4);
    return absl::OkStatus();
  }
  const char* src = t.data().data();
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = t.dtype() == v1::DTYPE_F16 ? kernels::Fp16ToFp32(h) : kernels::Bf16ToFp32(h);
  }
  return absl::OkStatus();
}

}  // namespace strata::transport
