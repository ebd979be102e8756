// An inference session on the client: embeds tokens, runs them through a Chain and applies the
// head. It tracks the committed text (sequence 0) and returns logits for sampling.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "client/chain.h"
#include "common/thread_pool.h"
#include "model/llama.h"

namespace strata::client {

class InferenceSession {
 public:
  InferenceSession(const model::Embedder* embedder,
                   const model::Head* head,
                   Chain* chain,
                   ThreadPool* pool);
  // Takes ownership of the chain.
  InferenceSession(const model::Embedder* embedder,
                   const model::Head* head,
                   std::unique_ptr<Chain> chain,
                   ThreadPool* pool)
      : InferenceSession(embedder, head, chain.get(), pool) {
    owned_chain_ = std::move(chain);
  }

  // Appends `tokens` at the next positions of the committed sequence and returns the logits
  // (n_vocab values) of the last one. With `all_logits`, logits() then holds one row per token.
  absl::StatusOr<std::span<const float>> Feed(std::span<const int32_t> tokens,
                                              bool all_logits = false);

  // Forgets positions >= pos (the chain drops their KV).
  absl::Status Rewind(int32_t pos);

  int32_t position() const { return static_cast<int32_t>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // Logits of the rows of the last Feed (one row unless all_logits).
  std::span<const float> logits() const { return logits_; }
  // Final hidden states (before the head) of the rows of the last Feed, for research use.
  std::span<const float> hidden() const { return last_hidden_; }
  int n_vocab() const { return head_->n_vocab(); }
  Chain* chain() const { return chain_; }

 private:
  const model::Embedder* embedder_;
  const model::Head* head_;
  Chain* chain_;
  std::unique_ptr<Chain> owned_chain_;
  ThreadPool* pool_;
  std::vector<int32_t> tokens_;
  std::vector<float> hidden_, last_hidden_, logits_;
  std::vector<model::Row> rows_;
  model::ForwardScratch scratch_;
};

}  // namespace strata::client
