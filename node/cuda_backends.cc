// `--device cuda:N`: spans on one GPU (model/cuda_span.h) with device-memory KV pools.
#include "common/strings.h"
#include "kernels/cuda/device.h"
#include "model/cuda_span.h"
#include "node/node_server.h"

namespace strata::node {

absl::StatusOr<Backends> MakeCudaBackends(int device, std::shared_ptr<const model::Model> model) {
  // Fails here, before the node binds or joins, when the device is missing.
  ASSIGN_OR_RETURN(kernels::cuda::DeviceInfo info, kernels::cuda::GetDeviceInfo(device));
  Backends b;
  b.make = [model, device](int first,
                           int last) -> absl::StatusOr<std::unique_ptr<model::SpanBackend>> {
    model::CudaSpanOptions options;
    options.device = device;
    auto span = model::CudaSpanBackend::Load(model, first, last, options);
    if (!span.ok()) return span.status();
    return std::unique_ptr<model::SpanBackend>(std::move(*span));
  };
  b.kv_pool = [device](size_t bytes) { return model::NewCudaKvPool(device, bytes); };
  b.description = StrCat("cuda:", device, " (", info.name, ", ", info.total_bytes >> 30, " GiB)");
  return b;
}

}  // namespace strata::node
