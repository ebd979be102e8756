#include "model/span_backend.h"

#include "common/strings.h"
#include "kernels/ops.h"

namespace strata::model {

std::unique_ptr<KvPool> NewCpuKvPool(size_t max_bytes) {
  return std::make_unique<KvPool>(max_bytes);
}

CpuSpanBackend::CpuSpanBackend(std::unique_ptr<LayerSpan> span, std::shared_ptr<ThreadPool> pool)
    : span_(std::move(span)), pool_(std::move(pool)) {}

std::string CpuSpanBackend::name() const {
  return StrCat("cpu/", kernels::ActiveIsa(), " x", pool_->num_threads());
}

}  // namespace strata::model
