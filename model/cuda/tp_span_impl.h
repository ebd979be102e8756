// The state of a CudaTpSpanBackend, shared by its files (tp_span.cc: loading and the forward
// pass; tp_upload.cc: slicing and uploading each device's weights); not part of its interface.
#pragma once

#include <array>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/nccl_link.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "model/cuda/tp_span.h"

namespace strata::model {

struct CudaTpSpanBackend::Impl {
  // One product: a device weight writing columns [col, col + w.n) of its output rows.
  struct Proj {
    kernels::cuda::DeviceWeightView w;
    int64_t col = 0;
    kernels::cuda::ActFormat format = kernels::cuda::ActFormat::kF32;
    const float* bias = nullptr;
  };
  struct Layer {
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    std::vector<Proj> qkv, wo, gate_up, down;
  };
  // Everything one device holds for its slice, and its per-forward scratch.
  struct Shard {
    int device = 0;
    TpShardPlan plan;
    kernels::cuda::DeviceArena weights;
    std::vector<Layer> layers;
    kernels::cuda::Stream stream;
    kernels::cuda::Event partial_ready, reduced;
    int64_t rows_capacity = 0;
    // norm | q|k|v | attention | gate|up | swiglu | this shard's partial sums | every shard's.
    kernels::cuda::DeviceBuffer upload, norm, qkv, attn, gate_up, ffn_act, partial, gather;
    std::array<kernels::cuda::DeviceBuffer, kernels::cuda::kNumActFormats> act_codes, act_meta;
    kernels::cuda::PinnedBuffer staging;
    std::vector<uint64_t> table;  // this shard's device pages, per forward
    float* hidden_dev = nullptr;  // this forward's hidden rows on the device
    kernels::cuda::KvArgs kv_base;
    const int32_t* positions_dev = nullptr;

    int64_t qkv_ld() const { return plan.q.size + 2 * plan.kv.size; }
  };

  std::vector<int> devices;
  std::string device_name;
  std::shared_ptr<const Model> model;
  HParams hp;
  int first = 0, last = 0;
  CudaTpSpanOptions options;
  std::deque<Shard> shards;                                   // (Shard is not movable)
  std::unique_ptr<kernels::cuda::TensorParallelGroup> group;  // null: the copy reducer
  std::string reducer;
  std::array<kernels::cuda::Event, 2> layer_done;  // on shard 0's stream
  // Host-side per-forward state shared by the shards.
  std::vector<kernels::cuda::KvRowInfo> row_info;
  std::vector<int32_t> positions, visible;

  int n() const { return static_cast<int>(shards.size()); }
  absl::Status Upload();
  absl::Status UploadShard(Shard& sh);
  absl::Status Reserve(Shard& sh, int64_t rows);
  absl::Status CheckPages(const KvCache& kv);
  absl::Status Project(Shard& sh,
                       const std::vector<Proj>& projs,
                       const float* x,
                       int64_t k,
                       int64_t rows,
                       float* y,
                       int64_t ldy);
  absl::Status Attention(Shard& sh, int l, int64_t rows);
  absl::Status Ffn(Shard& sh, int l, int64_t rows);
  // hidden (on every shard) += sum over shards of their partials, in rank order.
  absl::Status Reduce(int64_t rows);
  absl::Status SyncAll();
};

}  // namespace strata::model
