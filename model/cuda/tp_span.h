// A tensor-parallel CUDA span (STRATA_CUDA builds only): a node's layers split across several
// local GPUs, one shard per entry of a device list (`strata node --devices cuda:0,cuda:1`).
//
// Shard s of N holds, for every layer, whole KV heads [s * n_head_kv / N, ...) with their query
// heads (the matching rows of wq, wk, wv and input columns of wo), and FFN columns
// [s * n_ff / N, ...) (rows of gate and up, input columns of down), all in the file's
// quantization; the norms are replicated. Each shard computes partial outputs of wo and ffn_down
// for every row; the partials are gathered onto every shard and added in rank order (p0 + p1 +
// ... then hidden + sum), so every shard holds the same hidden rows bit for bit. Two reducers do
// that with the same sum kernel, so their results are identical:
//   - NCCL (kernels/cuda/nccl_link.h TensorParallelGroup::AllGatherSum) for distinct devices;
//   - device copies (cudaMemcpyPeerAsync into a gather buffer on each shard, ordered by events),
//     used when the list repeats a device (NCCL refuses two ranks on one GPU) or NCCL is missing.
// Both are batch-invariant: a row's output is bit-identical whatever the batch, as for the
// single-device span. Against CudaSpanBackend results agree within a tolerance only (the partial
// products are summed in another order); with one shard they are bit-identical.
//
// KV: each shard stores its own heads' K and V. A pool from NewCudaTpKvPool hands the KvCache one
// handle per logical page (the page size of the full kv_dim) and holds behind it one device page
// per shard of 1/N that size, so KvCache and KvPool keep their contracts unchanged; the pool's cap
// counts the bytes of all shards together.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/hparams.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/span_backend.h"

namespace strata::model {

// A range [begin, begin + size) of rows or columns of one weight.
struct TpRange {
  int64_t begin = 0;
  int64_t size = 0;
  bool operator==(const TpRange&) const = default;
};

// What shard `index` of `shards` holds of every layer.
struct TpShardPlan {
  int n_head = 0;     // local query heads
  int n_head_kv = 0;  // local KV heads
  TpRange q;          // rows of wq (and of the q bias); input columns of wo
  TpRange kv;         // rows of wk and wv (and their biases); this shard's part of each KV cell
  TpRange ff;         // rows of ffn_gate and ffn_up; input columns of ffn_down
};

// The split of `hp` into `shards` parts. INVALID_ARGUMENT (saying why) unless the KV heads divide
// evenly and the local widths of wo's and ffn_down's inputs (q and ff) are multiples of
// `column_multiple` (the quant block the CUDA products need for those weights: 32, or 256 for
// K-quants), so quantized weights are sliced at block boundaries.
absl::StatusOr<std::vector<TpShardPlan>> PlanTensorParallel(const HParams& hp,
                                                            int shards,
                                                            int64_t column_multiple);

enum class TpReducer {
  kAuto,  // NCCL when the devices are distinct and NCCL starts, else device copies
  kNccl,  // NCCL or fail (UNAVAILABLE when missing, INVALID_ARGUMENT when devices repeat)
  kCopy,  // device copies
};

struct CudaTpSpanOptions {
  std::vector<int> devices;  // one shard per entry; may repeat a device
  TpReducer reducer = TpReducer::kAuto;
  bool fuse_projections = true;  // as CudaSpanOptions::fuse_projections
};

// KV memory for a tensor-parallel span over `devices` (the same list as the span's): pages of
// KvPageBytes(full layout) / N on each device, capped at `max_bytes` over all devices together.
std::unique_ptr<KvPool> NewCudaTpKvPool(std::vector<int> devices, size_t max_bytes);

class CudaTpSpanBackend final : public SpanBackend {
 public:
  // Layers [first, last) of `model` split over options.devices. INVALID_ARGUMENT for a bad span,
  // an empty device list or a shape that cannot be split (see PlanTensorParallel); UNAVAILABLE
  // without a usable device (or without NCCL when TpReducer::kNccl is asked for);
  // RESOURCE_EXHAUSTED when the weights do not fit.
  static absl::StatusOr<std::unique_ptr<CudaTpSpanBackend>> Load(std::shared_ptr<const Model> model,
                                                                 int first,
                                                                 int last,
                                                                 const CudaTpSpanOptions& options);
  ~CudaTpSpanBackend() override;

  // "cuda:0+cuda:1 tensor-parallel (NVIDIA H100 80GB HBM3)"
  std::string name() const override;
  int first_layer() const override;
  int last_layer() const override;
  // The full layout (kv_dim of every head): caches are sized as for one device; the pool splits
  // each page across the shards.
  KvLayout kv_layout() const override;

  // LayerSpan::ForwardBatch's contract. Every part's cache must draw from a NewCudaTpKvPool over
  // the same device list (FAILED_PRECONDITION otherwise). Cancellation as CudaSpanBackend.
  absl::Status ForwardBatch(std::span<const LayerSpan::Part> parts,
                            float* hidden,
                            const std::atomic<bool>* cancel = nullptr) override;

  const std::vector<int>& devices() const;
  bool uses_nccl() const;
  // How the partial sums are combined: "NCCL 2.28.3 all-gather sum" or "device copies (why)".
  const std::string& reducer_description() const;
  // Device bytes of the weights over all shards.
  size_t weight_bytes() const;

 private:
  struct Impl;
  explicit CudaTpSpanBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::model
