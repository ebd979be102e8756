// Pieces shared by the CUDA span backends (model/cuda_span.cc, model/cuda_tp_span.cc,
// model/cuda_tp_kv.cc); not part of their interfaces.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"

namespace strata::model::cuda_internal {

// Restores the calling thread's current device when it goes out of scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&saved_);
    cudaSetDevice(device);
  }
  ~DeviceGuard() { cudaSetDevice(saved_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int saved_ = 0;
};

// For each row, its visible slots in (position, sequence set, slot) order (as LayerSpan does),
// appended to `visible`; `ranges` gets one (offset, count) per row.
void AppendVisible(const KvCache& kv,
                   std::span<const Row> rows,
                   std::vector<int32_t>& visible,
                   std::vector<std::pair<int32_t, int32_t>>& ranges);

// The per-shard device pages behind a page handle of a NewCudaTpKvPool over `devices` (in
// shard order); null when `handle` is not a live page of such a pool.
const std::vector<uint16_t*>* TpShardPages(const void* handle, const std::vector<int>& devices);

}  // namespace strata::model::cuda_internal
