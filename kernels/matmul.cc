// MatMul facade: validates, picks the ISA once, quantizes the activations into scratch and splits
// the output features over the pool. The per-ISA tiles live in matmul_{scalar,avx2}.cc.
#include <algorithm>
#include <array>
#include <atomic>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "common/logging.h"
#include "kernels/matmul_internal.h"
#include "kernels/ops.h"
#include "kernels/quant.h"

namespace strata::kernels {
namespace {

std::atomic<bool> g_force_scalar{false};

bool CpuHasAvx2FmaF16c() {
#if defined(__x86_64__) && defined(STRATA_HAVE_AVX2_KERNELS)
  static const bool has = [] {
    __builtin_cpu_init();
    unsigned eax, ebx, ecx, edx;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    // __builtin_cpu_supports also checks that the OS saves the AVX state (XGETBV).
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

bool UseAvx2() { return !g_force_scalar.load(std::memory_order_relaxed) && CpuHasAvx2FmaF16c(); }

const internal::MatMulKernel* SelectKernel(DType dtype) {
#if defined(STRATA_HAVE_AVX2_KERNELS)
  if (UseAvx2()) return internal::Avx2Kernel(dtype);
#endif
  return internal::ScalarKernel(dtype);
}

constexpr int64_t kRowGrain = 8;          // weight rows per unit of work handed to a thread
constexpr int64_t kInlineMacs = 1 << 15;  // below this much work threads cost more than they save

}  // namespace

std::string_view ActiveIsa() { return UseAvx2() ? "avx2" : "scalar"; }

void ForceScalarKernels(bool force) { g_force_scalar.store(force, std::memory_order_relaxed); }

void MatMul(const Tensor& w,
            const float* x,
            int64_t m,
            float* y,
            ThreadPool& pool,
            MatMulScratch& scratch) {
  const Tensor* ws[] = {&w};
  float* ys[] = {y};
  MatMulMany(ws, x, m, ys, pool, scratch);
}

void MatMulMany(std::span<const Tensor* const> ws,
                const float* x,
                int64_t m,
                std::span<float* const> ys,
                ThreadPool& pool,
                MatMulScratch& scratch) {
  STRATA_CHECK(!ws.empty() && ws.size() == ys.size() && ws.size() <= kMaxMatMulMany)
      << "MatMulMany: " << ws.size() << " weights, " << ys.size() << " outputs";
  const int64_t k = ws[0]->cols();
  // Per product: its kernel, its output-row range in the combined [0, total_rows) and which
  // quantized copy of x it reads (tensors whose kernels share a quantizer share the copy).
  struct Part {
    const internal::MatMulKernel* kern;
    int64_t first_row;
    int act;  // index into `acts`, or -1 for f32 x
  };
  struct Act {
    const internal::MatMulKernel* kern;  // the first kernel using this quantizer
    size_t offset, stride;
  };
  std::array<Part, kMaxMatMulMany> parts;
  std::array<Act, kMaxMatMulMany> acts;
  int n_acts = 0;
  int64_t total_rows = 0;
  size_t act_bytes = 0;
  for (size_t t = 0; t < ws.size(); ++t) {
    const Tensor& w = *ws[t];
    STRATA_CHECK(w.device == Device::kCpu) << "MatMul on CPU got a device tensor";
    STRATA_CHECK(w.cols() == k && k % Info(w.dtype).block_size == 0)
        << "MatMul: bad weight shape " << w.ShapeString() << " for rows of " << k;
    const internal::MatMulKernel* kern = SelectKernel(w.dtype);
    STRATA_CHECK(kern != nullptr) << "MatMul: unsupported weight dtype " << Info(w.dtype).name;
    int act = -1;
    if (kern->act_row_bytes != nullptr) {
      for (int i = 0; i < n_acts && act < 0; ++i) {
        if (acts[i].kern->quantize == kern->quantize) act = i;
      }
      if (act < 0) {
        const size_t stride = (kern->act_row_bytes(k) + 63) / 64 * 64;
        acts[n_acts] = Act{kern, act_bytes, stride};
        act_bytes += stride * static_cast<size_t>(std::max<int64_t>(m, 0));
        act = n_acts++;
      }
    }
    parts[t] = Part{kern, total_rows, act};
    total_rows += w.rows();
  }
  if (m <= 0 || total_rows == 0) return;

  const bool threaded = pool.num_threads() > 1 && total_rows * m * k >= kInlineMacs;
  scratch.activations.Resize(act_bytes);
  uint8_t* buf = scratch.activations.as<uint8_t>();
  auto quantize = [&](int64_t begin, int64_t end) {  // items are (activation format, row) pairs
    for (int64_t item = begin; item < end; ++item) {
      const Act& a = acts[item / m];
      const int64_t i = item % m;
      a.kern->quantize(x + i * k, buf + a.offset + i * a.stride, k);
    }
  };
  if (threaded && m >= 8) {
    pool.ParallelFor(n_acts * m, 1, quantize);
  } else {
    quantize(0, n_acts * m);
  }

  std::array<internal::MatMulArgs, kMaxMatMulMany> args;
  for (size_t t = 0; t < ws.size(); ++t) {
    const Part& p = parts[t];
    const bool f32 = p.act < 0;
    args[t] =
        internal::MatMulArgs{static_cast<const uint8_t*>(ws[t]->data),
                             ws[t]->row_bytes(),
                             f32 ? reinterpret_cast<const uint8_t*>(x) : buf + acts[p.act].offset,
                             f32 ? static_cast<size_t>(k) * sizeof(float) : acts[p.act].stride,
                             m,
                             k,
                             ys[t],
                             ws[t]->rows()};
  }
  // Rows [begin, end) of the concatenation of all products' output rows.
  auto rows = [&](int64_t begin, int64_t end) {
    for (size_t t = 0; t < ws.size(); ++t) {
      const int64_t first = parts[t].first_row, last = first + ws[t]->rows();
      const int64_t b = std::max(begin, first), e = std::min(end, last);
      if (b < e) parts[t].kern->rows(args[t], b - first, e - first);
    }
  };
  if (threaded) {
    pool.ParallelFor(total_rows, kRowGrain, rows);
  } else {
    rows(0, total_rows);
  }
}

void MatMulRef(const Tensor& w, const float* x, int64_t m, float* y) {
  const int64_t n = w.rows(), k = w.cols();
  std::vector<float> row(k);
  for (int64_t j = 0; j < n; ++j) {
    DequantizeRowRef(w.dtype, w.row(j), row.data(), k);
    for (int64_t i = 0; i < m; ++i) {
      double sum = 0.0;
      for (int64_t t = 0; t < k; ++t) sum += static_cast<double>(row[t]) * x[i * k + t];
      y[i * n + j] = static_cast<float>(sum);
    }
  }
}

}  // namespace strata::kernels
