// Everything local generation needs, loaded from one GGUF file: tokenizer, embeddings, all layers
// in this process, head, thread pool.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/local_chain.h"
#include "client/session.h"
#include "common/thread_pool.h"
#include "model/llama.h"
#include "text/tokenizer.h"

namespace strata::client {

struct LocalModelOptions {
  std::string path;
  int threads = 0;                    // 0: all CPUs
  size_t kv_bytes = size_t{1} << 30;  // KV cache cap
  bool show_progress = false;         // loading progress on stderr (when it is a terminal)
};

class LocalModel {
 public:
  static absl::StatusOr<std::unique_ptr<LocalModel>> Load(const LocalModelOptions& options);

  const model::Model& model() const { return *model_; }
  const text::Tokenizer& tokenizer() const { return *tokenizer_; }
  ThreadPool& pool() { return *pool_; }
  // A fresh session over a fresh KV cache.
  absl::StatusOr<std::unique_ptr<InferenceSession>> NewSession();
  // A fresh chain (all layers, this process).
  absl::StatusOr<std::unique_ptr<LocalChain>> NewChain();
  const model::Embedder& embedder() const { return *embedder_; }
  const model::Head& head() const { return *head_; }
  const LocalModelOptions& options() const { return options_; }

 private:
  LocalModelOptions options_;
  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  std::unique_ptr<model::Embedder> embedder_;
  std::unique_ptr<model::Head> head_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace strata::client
