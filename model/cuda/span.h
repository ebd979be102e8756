// The CUDA span backend (STRATA_CUDA builds only): a node's layers on one GPU.
//
// Weights are uploaded once at Load, with the file's quantization (repacked into the device
// layout of kernels/cuda/launchers.h); KV pages live in device memory (NewCudaKvPool); a forward
// copies the host hidden rows in, runs every layer on one stream and copies them back, so the
// wire format and the node worker stay the same as on the CPU.
//
// Determinism: every kernel is batch-invariant, so a row's output is bit-identical whatever the
// batch size, the other sessions in the batch, or where its cells sit in the cache; against the
// CPU backend results agree within a tolerance only (see kernels/cuda/ops.h).
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/span_backend.h"

namespace strata::model {

struct CudaSpanOptions {
  int device = 0;
  // Upload q|k|v and gate|up as one stacked matrix each when their dtypes match: fewer launches
  // and one activation quantization; per-row results are bit-identical either way.
  bool fuse_projections = true;
};

// KV memory of one GPU: pages are cudaMalloc'd on `device` as sessions grow, capped at
// `max_bytes`; RESOURCE_EXHAUSTED when the cap or the device's memory is reached.
std::unique_ptr<KvPool> NewCudaKvPool(int device, size_t max_bytes);

class CudaSpanBackend final : public SpanBackend {
 public:
  // Layers [first, last) of `model` on options.device. INVALID_ARGUMENT for a bad span or a weight
  // the CUDA kernels cannot take, UNAVAILABLE without a usable device, RESOURCE_EXHAUSTED when
  // the weights do not fit in device memory.
  static absl::StatusOr<std::unique_ptr<CudaSpanBackend>> Load(std::shared_ptr<const Model> model,
                                                               int first,
                                                               int last,
                                                               const CudaSpanOptions& options = {});
  ~CudaSpanBackend() override;

  std::string name() const override;  // "cuda:0 (NVIDIA H100 80GB HBM3)"
  int first_layer() const override;
  int last_layer() const override;
  KvLayout kv_layout() const override;

  // LayerSpan::ForwardBatch's contract. Every part's cache must draw from a pool made by
  // NewCudaKvPool for this backend's device (FAILED_PRECONDITION otherwise). Cancellation is
  // checked at layer boundaries as the layers are queued; the host runs at most two layers
  // ahead of the GPU, so a cancel takes effect within about two layers.
  absl::Status ForwardBatch(std::span<const LayerSpan::Part> parts,
                            float* hidden,
                            const std::atomic<bool>* cancel = nullptr) override;

  int device() const;
  // Device bytes taken by the span's weights.
  size_t weight_bytes() const;

 private:
  struct Impl;
  explicit CudaSpanBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::model
