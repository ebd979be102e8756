#include "client/local_model.h"

#include "common/progress.h"
#include "common/status.h"
#include "model/warm.h"

namespace strata::client {

absl::StatusOr<std::unique_ptr<LocalModel>> LocalModel::Load(const LocalModelOptions& options) {
  auto lm = std::unique_ptr<LocalModel>(new LocalModel());
  lm->options_ = options;
  ASSIGN_OR_RETURN(lm->model_, model::Model::Open(options.path));
  ASSIGN_OR_RETURN(lm->tokenizer_, text::Tokenizer::FromGguf(lm->model_->gguf()));
  ASSIGN_OR_RETURN(lm->embedder_, model::Embedder::Load(lm->model_));
  ASSIGN_OR_RETURN(lm->head_, model::Head::Load(lm->model_));
  ASSIGN_OR_RETURN(auto span, model::LayerSpan::Load(lm->model_, 0, lm->model_->hparams().n_layer));
  std::vector<kernels::Tensor> weights = lm->embedder_->tensors();
  for (const auto& t : span->tensors()) weights.push_back(t);
  for (const auto& t : lm->head_->tensors()) weights.push_back(t);
  if (options.show_progress) {
    Progress progress("Loading " + options.path, 1000);
    model::TouchPages(weights, [&](uint64_t done, uint64_t total) {
      progress.Update(total ? done * 1000 / total : 1000);
    });
  } else {
    model::TouchPages(weights);
  }
  lm->pool_ = std::make_unique<ThreadPool>(options.threads > 0 ? options.threads
                                                               : ThreadPool::DefaultThreads());
  return lm;
}

absl::StatusOr<std::unique_ptr<LocalChain>> LocalModel::NewChain() {
  return LocalChain::Create(model_, pool_.get(), options_.kv_bytes);
}

absl::StatusOr<std::unique_ptr<InferenceSession>> LocalModel::NewSession() {
  ASSIGN_OR_RETURN(auto chain, LocalChain::Create(model_, pool_.get(), options_.kv_bytes));
  return std::make_unique<InferenceSession>(
      embedder_.get(), head_.get(), std::move(chain), pool_.get());
}

}  // namespace strata::client
