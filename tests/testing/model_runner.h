// Runs a model file in-process through its seams (Embedder, LayerSpan, Head) for tests that
// compare logits across batchings, splits and thread counts.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "model/llama.h"

namespace strata::testkit {

class ModelRunner {
 public:
  // Aborts the test (gtest fatal failure) when the model cannot be opened.
  explicit ModelRunner(const std::string& path, int threads = 2);

  const model::Model& model() const { return *model_; }
  std::shared_ptr<const model::Model> shared_model() const { return model_; }
  int n_vocab() const { return model_->hparams().n_vocab; }
  int n_layer() const { return model_->hparams().n_layer; }
  ThreadPool& pool() { return *pool_; }

  // Embeddings of `tokens`, rows x n_embd.
  std::vector<float> Embed(std::span<const int32_t> tokens) const;
  // Logits of every row of `hidden` (final hidden states).
  std::vector<float> Logits(const std::vector<float>& hidden);

  // Logits for each token of `tokens` (one sequence starting at position 0):
  std::vector<float> OneBatch(std::span<const int32_t> tokens);
  std::vector<float> TokenByToken(std::span<const int32_t> tokens);
  // Through consecutive spans split at `boundaries` (e.g. {0, k, L}), each with its own cache.
  std::vector<float> Split(std::span<const int32_t> tokens, const std::vector<int>& boundaries);
  // In one cache, interleaved row by row with an unrelated sequence (id 1) in the same batches.
  std::vector<float> InterleavedWith(std::span<const int32_t> tokens,
                                     std::span<const int32_t> other);
  // Batched across sessions: `tokens` and `other` in separate caches, one ForwardBatch per step
  // of `chunk` tokens.
  std::vector<float> CrossSession(std::span<const int32_t> tokens,
                                  std::span<const int32_t> other,
                                  int chunk);

 private:
  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<model::Embedder> embedder_;
  std::unique_ptr<model::Head> head_;
  std::unique_ptr<model::LayerSpan> full_;
  std::unique_ptr<ThreadPool> pool_;
  model::ForwardScratch scratch_;
};

}  // namespace strata::testkit
