// `--device cuda:N`: spans on one GPU (model/cuda/span.h) with device-memory KV pools.
// `--devices cuda:0,cuda:1,...`: tensor-parallel spans over several (model/cuda/tp_span.h).
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/strings.h"
#include "kernels/cuda/device.h"
#include "model/cuda/span.h"
#include "model/cuda/tp_span.h"
#include "node/node_server.h"

namespace strata::node {
namespace {

// "cuda:0,cuda:1" -> {0, 1}.
absl::StatusOr<std::vector<int>> ParseCudaDevices(const std::string& list) {
  std::vector<int> devices;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    int index = -1;
    if (!absl::ConsumePrefix(&item, "cuda:") || !absl::SimpleAtoi(item, &index) || index < 0) {
      return absl::InvalidArgumentError(
          StrCat("bad device list '", list, "' (cuda:N or cuda:N,cuda:M,...)"));
    }
    devices.push_back(index);
  }
  return devices;
}

Backends SingleDevice(int device,
                      const kernels::cuda::DeviceInfo& info,
                      std::shared_ptr<const model::Model> model) {
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

}  // namespace

absl::StatusOr<Backends> MakeCudaBackends(const std::string& device_list,
                                          std::shared_ptr<const model::Model> model) {
  ASSIGN_OR_RETURN(std::vector<int> devices, ParseCudaDevices(device_list));
  // Fails here, before the node binds or joins, when a device is missing.
  std::vector<kernels::cuda::DeviceInfo> infos;
  for (int d : devices) {
    ASSIGN_OR_RETURN(kernels::cuda::DeviceInfo info, kernels::cuda::GetDeviceInfo(d));
    infos.push_back(info);
  }
  if (devices.size() == 1) return SingleDevice(devices[0], infos[0], std::move(model));
  Backends b;
  b.make = [model, devices](int first,
                            int last) -> absl::StatusOr<std::unique_ptr<model::SpanBackend>> {
    model::CudaTpSpanOptions options;
    options.devices = devices;
    auto span = model::CudaTpSpanBackend::Load(model, first, last, options);
    if (!span.ok()) return span.status();
    return std::unique_ptr<model::SpanBackend>(std::move(*span));
  };
  b.kv_pool = [devices](size_t bytes) { return model::NewCudaTpKvPool(devices, bytes); };
  std::string names;
  for (size_t i = 0; i < devices.size(); ++i) {
    names += StrCat(i == 0 ? "" : "+", "cuda:", devices[i]);
  }
  b.description = StrCat(
      names, " tensor-parallel (", infos[0].name, ", ", infos[0].total_bytes >> 30, " GiB each)");
  return b;
}

}  // namespace strata::node
