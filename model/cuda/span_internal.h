// Pieces shared by the CUDA span backends (model/cuda/span.cc, tp_span.cc, tp_kv.cc), defined in
// span_internal.cc and (TpShardPages) tp_kv.cc; not part of their interfaces.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/launchers.h"
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

// One layer's tensors as the file holds them (biases only for models with q/k/v biases).
struct HostLayer {
  kernels::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down, bq, bk, bv;
};

// Reads layer `l`'s tensors and checks that the CUDA products take their shapes: every matrix,
// or, with `check_output_projections` false, all but wo and ffn_down (whose column slices a
// tensor-parallel span checks itself). INVALID_ARGUMENT naming the layer otherwise.
absl::StatusOr<HostLayer> ReadLayer(const Model& model, int l, bool check_output_projections);

// The KV cells one forward adds to its sessions' caches, part by part.
class BatchCells {
 public:
  // Checks that every part's cache has `want`'s layout and that `check_pages` accepts its pages
  // (again after adding, since adding may allocate pages), then adds one cell per row. On
  // failure no cell stays added. With no rows at all, checks the layouts only.
  absl::Status Add(std::span<const LayerSpan::Part> parts,
                   const KvLayout& want,
                   const std::function<absl::Status(const KvCache&)>& check_pages);
  int64_t rows() const { return rows_; }

  // What the kernels read per row, in part order: its cell, its visible cells (in (position,
  // sequence set, slot) order, as LayerSpan sees them) and where its pages start in the page
  // table; `append_pages` appends a part's page table entries wherever the caller keeps them
  // and returns the index of the first.
  void Describe(std::span<const LayerSpan::Part> parts,
                const std::function<int32_t(const KvCache&)>& append_pages,
                std::vector<kernels::cuda::KvRowInfo>& row_info,
                std::vector<int32_t>& positions,
                std::vector<int32_t>& visible) const;

  // Gives every added cell back (a forward that failed or was cancelled).
  void Release();
  // After a finished pass: parts given up meanwhile give their cells back and are told so.
  void ReleaseCancelled(std::span<const LayerSpan::Part> parts);

 private:
  std::vector<std::pair<KvCache*, std::vector<int32_t>>> added_;
  int64_t rows_ = 0;
};

// Whether a forward should stop before its next layer: `cancel` is set or every part was given
// up. If so, every part is told it was cancelled.
bool StopRequested(std::span<const LayerSpan::Part> parts, const std::atomic<bool>* cancel);

// One upload of a forward's inputs: hidden | row info | positions | visible | page table, each
// 256-byte aligned, the same layout in the pinned staging area and on the device.
struct UploadLayout {
  UploadLayout(int64_t rows,
               int64_t n_embd,
               const std::vector<kernels::cuda::KvRowInfo>& row_info,
               const std::vector<int32_t>& positions,
               const std::vector<int32_t>& visible,
               size_t table_entries);
  // Writes every array at its offset in `host` (total bytes).
  void Pack(uint8_t* host,
            const float* hidden,
            const std::vector<kernels::cuda::KvRowInfo>& row_info,
            const std::vector<int32_t>& positions,
            const std::vector<int32_t>& visible,
            const std::vector<uint64_t>& table) const;
  // The device view of an upload at `dev`: positions, and the KV arguments less kv_dim/layer.
  const int32_t* Positions(const uint8_t* dev) const {
    return reinterpret_cast<const int32_t*>(dev + positions_at);
  }
  kernels::cuda::KvArgs Kv(const uint8_t* dev) const;

  size_t hidden_bytes = 0, rows_at = 0, positions_at = 0, visible_at = 0, table_at = 0, total = 0;
};

// The per-shard device pages behind a page handle of a NewCudaTpKvPool over `devices` (in
// shard order); null when `handle` is not a live page of such a pool.
const std::vector<uint16_t*>* TpShardPages(const void* handle, const std::vector<int>& devices);

}  // namespace strata::model::cuda_internal
