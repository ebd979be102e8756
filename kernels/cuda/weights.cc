#include "kernels/cuda/weights.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/strings.h"
#include "kernels/cuda/ops.h"
#include "kernels/quant.h"

namespace strata::kernels::cuda {

WeightRowBytes DeviceRowBytes(DType dtype, int64_t k) {
  const size_t nb32 = static_cast<size_t>(k / 32), nb256 = static_cast<size_t>(k / 256);
  switch (dtype) {
    case DType::kQ4_0:
      return {static_cast<size_t>(k / 2), 0, nb32 * 2};
    case DType::kQ4_1:
      return {static_cast<size_t>(k / 2), 0, nb32 * 4};
    case DType::kQ8_0:
      return {static_cast<size_t>(k), 0, nb32 * 2};
    case DType::kQ4_K:
      return {static_cast<size_t>(k / 2), nb256 * 12, nb256 * 4};
    case DType::kQ6_K:
      return {nb256 * 192, nb256 * 16, nb256 * 2};
    case DType::kF16:
    case DType::kBF16:
      return {static_cast<size_t>(k) * 2, 0, 0};
    case DType::kF32:
      return {static_cast<size_t>(k) * 4, 0, 0};
    default:
      return {};
  }
}

void RepackRows(DType dtype,
                const uint8_t* src,
                size_t src_stride,
                int64_t n,
                int64_t k,
                uint8_t* q,
                uint8_t* s,
                uint8_t* d) {
  const WeightRowBytes rb = DeviceRowBytes(dtype, k);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = src + r * src_stride;
    uint8_t* qr = q + r * rb.q;
    uint8_t* sr = s == nullptr ? nullptr : s + r * rb.s;
    uint8_t* dr = d == nullptr ? nullptr : d + r * rb.d;
    switch (dtype) {
      case DType::kQ4_0: {
        const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
        for (int64_t i = 0; i < k / 32; ++i) {
          std::memcpy(qr + i * 16, b[i].qs, 16);
          std::memcpy(dr + i * 2, &b[i].d, 2);
        }
        break;
      }
      case DType::kQ4_1: {
        const auto* b = reinterpret_cast<const BlockQ4_1*>(row);
        for (int64_t i = 0; i < k / 32; ++i) {
          std::memcpy(qr + i * 16, b[i].qs, 16);
          std::memcpy(dr + i * 4, &b[i].d, 2);
          std::memcpy(dr + i * 4 + 2, &b[i].m, 2);
        }
        break;
      }
      case DType::kQ8_0: {
        const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
        for (int64_t i = 0; i < k / 32; ++i) {
          std::memcpy(qr + i * 32, b[i].qs, 32);
          std::memcpy(dr + i * 2, &b[i].d, 2);
        }
        break;
      }
      case DType::kQ4_K: {
        const auto* b = reinterpret_cast<const BlockQ4_K*>(row);
        for (int64_t i = 0; i < k / 256; ++i) {
          std::memcpy(qr + i * 128, b[i].qs, 128);
          std::memcpy(sr + i * 12, b[i].scales, 12);
          std::memcpy(dr + i * 4, &b[i].d, 2);
          std::memcpy(dr + i * 4 + 2, &b[i].dmin, 2);
        }
        break;
      }
      case DType::kQ6_K: {
        const auto* b = reinterpret_cast<const BlockQ6_K*>(row);
        for (int64_t i = 0; i < k / 256; ++i) {
          std::memcpy(qr + i * 192, b[i].ql, 128);
          std::memcpy(qr + i * 192 + 128, b[i].qh, 64);
          std::memcpy(sr + i * 16, b[i].scales, 16);
          std::memcpy(dr + i * 2, &b[i].d, 2);
        }
        break;
      }
      default:
        std::memcpy(qr, row, rb.q);
        break;
    }
  }
}

void UnpackRow(
    DType dtype, int64_t k, const uint8_t* q, const uint8_t* s, const uint8_t* d, uint8_t* dst) {
  switch (dtype) {
    case DType::kQ4_0: {
      auto* b = reinterpret_cast<BlockQ4_0*>(dst);
      for (int64_t i = 0; i < k / 32; ++i) {
        std::memcpy(b[i].qs, q + i * 16, 16);
        std::memcpy(&b[i].d, d + i * 2, 2);
      }
      break;
    }
    case DType::kQ4_1: {
      auto* b = reinterpret_cast<BlockQ4_1*>(dst);
      for (int64_t i = 0; i < k / 32; ++i) {
        std::memcpy(b[i].qs, q + i * 16, 16);
        std::memcpy(&b[i].d, d + i * 4, 2);
        std::memcpy(&b[i].m, d + i * 4 + 2, 2);
      }
      break;
    }
    case DType::kQ8_0: {
      auto* b = reinterpret_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < k / 32; ++i) {
        std::memcpy(b[i].qs, q + i * 32, 32);
        std::memcpy(&b[i].d, d + i * 2, 2);
      }
      break;
    }
    case DType::kQ4_K: {
      auto* b = reinterpret_cast<BlockQ4_K*>(dst);
      for (int64_t i = 0; i < k / 256; ++i) {
        std::memcpy(b[i].qs, q + i * 128, 128);
        std::memcpy(b[i].scales, s + i * 12, 12);
        std::memcpy(&b[i].d, d + i * 4, 2);
        std::memcpy(&b[i].dmin, d + i * 4 + 2, 2);
      }
      break;
    }
    case DType::kQ6_K: {
      auto* b = reinterpret_cast<BlockQ6_K*>(dst);
      for (int64_t i = 0; i < k / 256; ++i) {
        std::memcpy(b[i].ql, q + i * 192, 128);
        std::memcpy(b[i].qh, q + i * 192 + 128, 64);
        std::memcpy(b[i].scales, s + i * 16, 16);
        std::memcpy(&b[i].d, d + i * 2, 2);
      }
      break;
    }
    default:
      std::memcpy(dst, q, DeviceRowBytes(dtype, k).q);
      break;
  }
}

absl::StatusOr<DeviceArena> DeviceArena::Create(int device, size_t bytes) {
  DeviceArena a;
  a.device_ = device;
  ASSIGN_OR_RETURN(a.buffer_, DeviceBuffer::Allocate(device, bytes));
  return a;
}

absl::StatusOr<uint8_t*> DeviceArena::Take(size_t bytes) {
  const size_t rounded = Round(bytes);
  if (used_ + rounded > buffer_.size()) {
    return absl::FailedPreconditionError(
        StrCat("device arena full: ", used_ + rounded, " of ", buffer_.size(), " bytes"));
  }
  uint8_t* p = buffer_.as<uint8_t>() + used_;
  used_ += rounded;
  return p;
}

size_t UploadBytes(DType dtype, int64_t n, int64_t k) {
  const WeightRowBytes rb = DeviceRowBytes(dtype, k);
  const size_t rows = static_cast<size_t>(n);
  return DeviceArena::Round(rb.q * rows) + (rb.s ? DeviceArena::Round(rb.s * rows) : 0) +
         (rb.d ? DeviceArena::Round(rb.d * rows) : 0);
}

absl::StatusOr<DeviceWeightView> UploadWeight(std::span<const WeightSlice> parts,
                                              DeviceArena& arena) {
  if (parts.empty() || parts[0].tensor == nullptr) {
    return absl::InvalidArgumentError("UploadWeight: no parts");
  }
  const DType dtype = parts[0].tensor->dtype;
  const int block = Info(dtype).block_size;
  struct Resolved {
    const uint8_t* src;
    size_t stride;
    int64_t rows;
  };
  std::vector<Resolved> resolved;
  int64_t n = 0, k = -1;
  for (const WeightSlice& p : parts) {
    const Tensor* t = p.tensor;
    if (t == nullptr || t->dtype != dtype || t->ndim != 2) {
      return absl::InvalidArgumentError("UploadWeight: parts must be 2-D tensors of one dtype");
    }
    const int64_t rows = p.rows < 0 ? t->rows() - p.row0 : p.rows;
    const int64_t cols = p.cols < 0 ? t->cols() - p.col0 : p.cols;
    if (p.row0 < 0 || rows <= 0 || p.row0 + rows > t->rows() || p.col0 < 0 || cols <= 0 ||
        p.col0 + cols > t->cols() || p.col0 % block != 0 || cols % block != 0) {
      return absl::InvalidArgumentError(StrCat("UploadWeight: bad slice of ", t->ShapeString()));
    }
    if (k >= 0 && cols != k) {
      return absl::InvalidArgumentError("UploadWeight: parts have different column counts");
    }
    k = cols;
    resolved.push_back({t->row(p.row0) + RowBytes(dtype, p.col0), t->row_bytes(), rows});
    n += rows;
  }
  RETURN_IF_ERROR(CheckWeightShape(dtype, k));
  const WeightRowBytes rb = DeviceRowBytes(dtype, k);
  DeviceWeightView view;
  view.dtype = dtype;
  view.n = n;
  view.k = k;
  ASSIGN_OR_RETURN(uint8_t * q, arena.Take(rb.q * n));
  uint8_t* s = nullptr;
  uint8_t* d = nullptr;
  if (rb.s) {
    ASSIGN_OR_RETURN(s, arena.Take(rb.s * n));
  }
  if (rb.d) {
    ASSIGN_OR_RETURN(d, arena.Take(rb.d * n));
  }
  view.q = q;
  view.s = s;
  view.d = d;
  // Repack through a bounded host buffer (about 64 MiB of rows at a time).
  const size_t row_bytes = rb.q + rb.s + rb.d;
  const int64_t chunk_rows =
      std::max<int64_t>(1, (size_t{64} << 20) / std::max<size_t>(1, row_bytes));
  std::vector<uint8_t> hq, hs, hd;
  STRATA_CUDA_RETURN_IF_ERROR(cudaSetDevice(arena.device()), "cudaSetDevice");
  int64_t out_row = 0;
  for (const Resolved& r : resolved) {
    for (int64_t r0 = 0; r0 < r.rows; r0 += chunk_rows) {
      const int64_t cnt = std::min(chunk_rows, r.rows - r0);
      hq.resize(rb.q * cnt);
      hs.resize(rb.s * cnt);
      hd.resize(rb.d * cnt);
      RepackRows(dtype,
                 r.src + r0 * r.stride,
                 r.stride,
                 cnt,
                 k,
                 hq.data(),
                 rb.s ? hs.data() : nullptr,
                 rb.d ? hd.data() : nullptr);
      const size_t at = static_cast<size_t>(out_row + r0);
      STRATA_CUDA_RETURN_IF_ERROR(
          cudaMemcpy(q + at * rb.q, hq.data(), hq.size(), cudaMemcpyHostToDevice),
          "upload weights");
      if (rb.s) {
        STRATA_CUDA_RETURN_IF_ERROR(
            cudaMemcpy(s + at * rb.s, hs.data(), hs.size(), cudaMemcpyHostToDevice),
            "upload scales");
      }
      if (rb.d) {
        STRATA_CUDA_RETURN_IF_ERROR(
            cudaMemcpy(d + at * rb.d, hd.data(), hd.size(), cudaMemcpyHostToDevice),
            "upload scales");
      }
    }
    out_row += r.rows;
  }
  return view;
}

absl::StatusOr<const float*> UploadFloats(std::span<const Tensor* const> parts,
                                          DeviceArena& arena) {
  size_t count = 0;
  for (const Tensor* t : parts) {
    if (t == nullptr || t->dtype != DType::kF32) {
      return absl::InvalidArgumentError("UploadFloats: parts must be f32 tensors");
    }
    count += static_cast<size_t>(t->numel());
  }
  ASSIGN_OR_RETURN(uint8_t * dst, arena.Take(count * sizeof(float)));
  STRATA_CUDA_RETURN_IF_ERROR(cudaSetDevice(arena.device()), "cudaSetDevice");
  size_t at = 0;
  for (const Tensor* t : parts) {
    const size_t bytes = static_cast<size_t>(t->numel()) * sizeof(float);
    STRATA_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst + at, t->data, bytes, cudaMemcpyHostToDevice),
                                "upload vector");
    at += bytes;
  }
  return reinterpret_cast<const float*>(dst);
}

}  // namespace strata::kernels::cuda
