// Where a node's layer span runs: the CPU (this file) or a GPU (kernels/cuda, behind
// STRATA_CUDA). The node worker drives every backend the same way: a KV pool for its sessions'
// caches, and batched forwards over host hidden states (the wire format), so a route may mix
// CPU and GPU nodes.
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace strata::model {

class SpanBackend {
 public:
  virtual ~SpanBackend() = default;

  // "cpu/avx2", "cuda:0 (NVIDIA H100 80GB HBM3)", ...
  virtual std::string name() const = 0;
  virtual int first_layer() const = 0;
  virtual int last_layer() const = 0;
  virtual KvLayout kv_layout() const = 0;

  // A KV cache for one session over this span, drawing from `pool` (which must come from
  // NewKvPool of the same backend).
  virtual std::unique_ptr<KvCache> NewKvCache(KvPool* pool) const {
    return std::make_unique<KvCache>(pool, kv_layout());
  }

  // Runs the rows of several sessions (LayerSpan::ForwardBatch's contract): `hidden` is host
  // memory, rows x n_embd f32, updated in place.
  virtual absl::Status ForwardBatch(std::span<const LayerSpan::Part> parts,
                                    float* hidden,
                                    const std::atomic<bool>* cancel = nullptr) = 0;
};

// The KV memory of one backend kind, capped at `max_bytes` (host memory for the CPU).
std::unique_ptr<KvPool> NewCpuKvPool(size_t max_bytes);

// The CPU backend: a LayerSpan run by `pool` (shared by every span of a node).
class CpuSpanBackend final : public SpanBackend {
 public:
  CpuSpanBackend(std::unique_ptr<LayerSpan> span, std::shared_ptr<ThreadPool> pool);
  std::string name() const override;
  int first_layer() const override { return span_->first(); }
  int last_layer() const override { return span_->last(); }
  KvLayout kv_layout() const override { return span_->kv_layout(); }
  absl::Status ForwardBatch(std::span<const LayerSpan::Part> parts,
                            float* hidden,
                            const std::atomic<bool>* cancel) override {
    return span_->ForwardBatch(parts, hidden, *pool_, scratch_, cancel);
  }
  const LayerSpan& span() const { return *span_; }

 private:
  std::unique_ptr<LayerSpan> span_;
  std::shared_ptr<ThreadPool> pool_;
  ForwardScratch scratch_;
};

}  // namespace strata::model
