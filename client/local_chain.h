// A Chain that runs one or more consecutive layer spans in this process, each over its own KV
// cache: local generation, and in-process split tests.
#pragma once

#include <memory>
#include <vector>

#include "client/chain.h"
#include "common/thread_pool.h"
#include "model/llama.h"

namespace strata::client {

class LocalChain : public Chain {
 public:
  // `boundaries` = {0, k1, ..., n_layer}: spans [0,k1), [k1,k2), ... Empty means one span.
  static absl::StatusOr<std::unique_ptr<LocalChain>> Create(
      std::shared_ptr<const model::Model> model, ThreadPool* pool, size_t kv_bytes,
      std::vector<int> boundaries = {});

  absl::Status Forward(std::span<const model::Row> rows, const float* hidden,
                       std::span<const int32_t> out_rows, float* out) override;
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override;
  std::vector<HopInfo> Hops() const override;

  const model::KvCache& cache(int span) const { return *stages_[span].cache; }

 private:
  struct Stage {
    std::unique_ptr<model::LayerSpan> span;
    std::unique_ptr<model::KvPool> pool;
    std::unique_ptr<model::KvCache> cache;
  };
  ThreadPool* pool_ = nullptr;
  int n_embd_ = 0;
  std::vector<Stage> stages_;
  model::ForwardScratch scratch_;
  std::vector<float> work_;
};

}  // namespace strata::client
