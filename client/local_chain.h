// A Chain that runs one or more consecutive layer spans in this process, each over its own KV
// cache: local generation, and in-process split tests.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "client/chain.h"
#include "common/thread_pool.h"
#include "model/llama.h"

namespace strata::client {

class LocalChain : public Chain {
 public:
  // `boundaries` = {0, k1, ..., n_layer}: spans [0,k1), [k1,k2), ... Empty means one span.
  // With `allow_partial` the last boundary may stop before n_layer (early exit: the head then
  // reads the output of an inner layer — self-speculation).
  static absl::StatusOr<std::unique_ptr<LocalChain>> Create(
      std::shared_ptr<const model::Model> model,
      ThreadPool* pool,
      size_t kv_bytes,
      std::vector<int> boundaries = {},
      bool allow_partial = false);

  absl::Status Forward(std::span<const model::Row> rows,
                       const float* hidden,
                       std::span<const int32_t> out_rows,
                       float* out) override;
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override;
  absl::Status Commit(model::SeqId seq, int32_t until_pos) override;
  std::vector<HopInfo> Hops() const override;
  absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows,
                                     const float* hidden,
                                     std::span<const int32_t> out_rows) override;
  absl::Status WaitRun(uint64_t run, float* out) override;
  absl::StatusOr<uint64_t> SubmitVerifiedRun(std::span<const model::Row> rows,
                                             const float* hidden,
                                             std::span<const int32_t> out_rows,
                                             const model::VerifySpec& verify) override;
  absl::Status WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) override;
  void CancelRuns(std::span<const uint64_t> runs) override {}
  void TruncateAsync(model::SeqId seq, int32_t from_pos) override { (void)Truncate(seq, from_pos); }
  void CommitAsync(model::SeqId seq, int32_t until_pos) override { (void)Commit(seq, until_pos); }

  const model::KvCache& cache(int span) const { return *stages_[span].cache; }

 private:
  struct Stage {
    std::unique_ptr<model::LayerSpan> span;
    std::unique_ptr<model::KvPool> pool;
    std::unique_ptr<model::KvCache> cache;
  };
  struct Finished {
    absl::Status status;
    std::vector<float> hidden;    // out rows
    std::vector<int32_t> tokens;  // a verified run's decision
    bool verified = false;
  };
  std::shared_ptr<const model::Model> model_;
  ThreadPool* pool_ = nullptr;
  int n_embd_ = 0;
  std::vector<Stage> stages_;
  model::ForwardScratch scratch_;
  std::vector<float> work_;
  std::map<uint64_t, Finished> runs_;  // finished, not waited
  uint64_t next_run_ = 1;
  std::unique_ptr<model::Verifier> verifier_;  // made on the first verified run
};

}  // namespace strata::client
