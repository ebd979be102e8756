// The parts of a tensor-parallel CUDA span that are not its forward pass: how a model is split
// (PlanTensorParallel, host arithmetic) and the KV pool whose pages are split across devices.
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "common/strings.h"
#include "model/cuda/span_internal.h"
#include "model/cuda/tp_span.h"

namespace strata::model {

absl::StatusOr<std::vector<TpShardPlan>> PlanTensorParallel(const HParams& hp,
                                                            int shards,
                                                            int64_t column_multiple) {
  if (shards < 1) return absl::InvalidArgumentError("tensor parallelism needs at least one device");
  if (hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv != 0) {
    return absl::InvalidArgumentError(
        StrCat(hp.n_head, " query heads do not group over ", hp.n_head_kv, " KV heads"));
  }
  if (hp.n_head_kv % shards != 0) {
    return absl::InvalidArgumentError(StrCat("cannot split ",
                                             hp.n_head_kv,
                                             " KV heads over ",
                                             shards,
                                             " devices (each device needs whole KV heads)"));
  }
  if (hp.n_ff % shards != 0) {
    return absl::InvalidArgumentError(
        StrCat("cannot split the FFN width ", hp.n_ff, " over ", shards, " devices"));
  }
  const int n_head = hp.n_head / shards, n_head_kv = hp.n_head_kv / shards;
  const int64_t q = static_cast<int64_t>(n_head) * hp.head_dim;
  const int64_t kv = static_cast<int64_t>(n_head_kv) * hp.head_dim;
  const int64_t ff = hp.n_ff / shards;
  if (column_multiple > 0 && q % column_multiple != 0) {
    return absl::InvalidArgumentError(StrCat("cannot split the attention output's ",
                                             hp.q_dim(),
                                             " input columns over ",
                                             shards,
                                             " devices at quant-block boundaries (",
                                             q,
                                             " each, not a multiple of ",
                                             column_multiple,
                                             ")"));
  }
  if (column_multiple > 0 && ff % column_multiple != 0) {
    return absl::InvalidArgumentError(StrCat("cannot split ffn_down's ",
                                             hp.n_ff,
                                             " input columns over ",
                                             shards,
                                             " devices at quant-block boundaries (",
                                             ff,
                                             " each, not a multiple of ",
                                             column_multiple,
                                             ")"));
  }
  std::vector<TpShardPlan> plans(shards);
  for (int s = 0; s < shards; ++s) {
    TpShardPlan& p = plans[s];
    p.n_head = n_head;
    p.n_head_kv = n_head_kv;
    p.q = {s * q, q};
    p.kv = {s * kv, kv};
    p.ff = {s * ff, ff};
  }
  return plans;
}

namespace {

using cuda_internal::DeviceGuard;

// What a KvCache page handle of a tensor-parallel pool stands for: one device page per shard.
// The handle is the record's address; KvCache only does address arithmetic on it, never reads it.
struct TpPage {
  std::vector<int> devices;
  std::vector<uint16_t*> pages;
};

// Live records of every tensor-parallel pool, so a span can tell its pools' handles from others.
class TpPageRegistry {
 public:
  static TpPageRegistry& Get() {
    static TpPageRegistry* r = new TpPageRegistry();
    return *r;
  }
  void Add(const TpPage* p) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    live_.insert(p);
  }
  void Remove(const TpPage* p) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    live_.erase(p);
  }
  const TpPage* Find(const void* handle) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(static_cast<const TpPage*>(handle));
    return it == live_.end() ? nullptr : *it;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_set<const TpPage*> live_ ABSL_GUARDED_BY(mu_);
};

// A shard's part of a page of `bytes` (KvPageBytes of the full layout): its kv_dim / n of every
// cell, rounded up when the full page was rounded to 64 bytes.
size_t ShardBytes(size_t bytes, size_t n) { return (bytes + n - 1) / n; }

class CudaTpKvPool final : public KvPool {
 public:
  CudaTpKvPool(std::vector<int> devices, size_t max_bytes)
      : KvPool(max_bytes), devices_(std::move(devices)) {}
  ~CudaTpKvPool() override { ReleaseSpare(); }

 protected:
  uint16_t* AllocatePage(size_t bytes) override {
    if (devices_.empty()) return nullptr;
    auto page = std::make_unique<TpPage>();
    page->devices = devices_;
    for (int d : devices_) {
      DeviceGuard guard(d);
      void* p = nullptr;
      if (cudaMalloc(&p, ShardBytes(bytes, devices_.size())) != cudaSuccess) {
        cudaGetLastError();
        FreeShards(*page);
        return nullptr;
      }
      page->pages.push_back(static_cast<uint16_t*>(p));
    }
    TpPageRegistry::Get().Add(page.get());
    return reinterpret_cast<uint16_t*>(page.release());
  }
  // On each device's legacy default stream, as CudaKvPool: ordered after the work already queued
  // on the backends' (blocking) streams.
  void ZeroPage(uint16_t* handle, size_t bytes) override {
    const TpPage& page = *reinterpret_cast<const TpPage*>(handle);
    for (size_t s = 0; s < page.pages.size(); ++s) {
      DeviceGuard guard(page.devices[s]);
      cudaMemsetAsync(page.pages[s], 0, ShardBytes(bytes, page.pages.size()), nullptr);
    }
  }
  void FreePage(uint16_t* handle) override {
    TpPage* page = reinterpret_cast<TpPage*>(handle);
    TpPageRegistry::Get().Remove(page);
    FreeShards(*page);
    delete page;
  }

 private:
  static void FreeShards(const TpPage& page) {
    for (size_t s = 0; s < page.pages.size(); ++s) {
      DeviceGuard guard(page.devices[s]);
      cudaFree(page.pages[s]);
    }
  }
  std::vector<int> devices_;
};

}  // namespace

namespace cuda_internal {

const std::vector<uint16_t*>* TpShardPages(const void* handle, const std::vector<int>& devices) {
  const TpPage* page = TpPageRegistry::Get().Find(handle);
  return page != nullptr && page->devices == devices ? &page->pages : nullptr;
}

}  // namespace cuda_internal

std::unique_ptr<KvPool> NewCudaTpKvPool(std::vector<int> devices, size_t max_bytes) {
  return std::make_unique<CudaTpKvPool>(std::move(devices), max_bytes);
}

}  // namespace strata::model
