#include "cli/engine.h"

#include "client/run_request.h"
#include "common/status.h"

namespace strata::cli {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Swarm(const std::vector<std::string>& coordinators,
                                                      const std::string& model_path,
                                                      int threads) {
  auto e = std::unique_ptr<Engine>(new Engine());
  auto model = model::Model::Open(model_path);
  if (!model.ok()) return model.status();
  e->model_ = *std::move(model);
  ClientOptions o;
  o.coordinators = coordinators;
  o.model_path = model_path;
  o.threads = threads;
  auto client = client::SwarmClient::Create(o);
  if (!client.ok()) return client.status();
  e->swarm_ = *std::move(client);
  return e;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Local(const std::string& model_path,
                                                      int threads,
                                                      bool show_progress) {
  auto e = std::unique_ptr<Engine>(new Engine());
  auto model = model::Model::Open(model_path);
  if (!model.ok()) return model.status();
  e->model_ = *std::move(model);
  client::LocalModelOptions o;
  o.path = model_path;
  o.threads = threads;
  o.show_progress = show_progress;
  auto local = client::LocalModel::Load(o);
  if (!local.ok()) return local.status();
  e->local_ = *std::move(local);
  e->model_path_ = model_path;
  e->threads_ = threads;
  e->local_drafters_ =
      std::make_unique<client::DrafterCache>(model_path, e->model_->hparams().n_vocab, threads);
  return e;
}

const text::Tokenizer& Engine::tokenizer() const {
  return local_ ? local_->tokenizer() : swarm_->tokenizer();
}

int Engine::context_length() const {
  const int n = model_->hparams().n_ctx_train;
  return n > 0 ? n : 4096;
}

absl::StatusOr<std::unique_ptr<client::InferenceSession>> Engine::NewSession() {
  if (local_) return local_->NewSession();
  return swarm_->NewInferenceSession();
}

absl::StatusOr<GenerateResult> Engine::Speculate(std::span<const int32_t> prompt,
                                                 const GenerateRequest& request,
                                                 const TokenCallback& on_token) {
  if (!local_) return swarm_->GenerateTokens(prompt, request, on_token);
  std::vector<std::unique_ptr<client::LocalChain>> owned;
  std::vector<client::Chain*> chains;
  for (int i = 0; i < client::ChainsFor(request); ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<client::LocalChain> chain, local_->NewChain());
    chains.push_back(chain.get());
    owned.push_back(std::move(chain));
  }
  client::RequestContext context{&local_->embedder(),
                                 &local_->head(),
                                 &local_->tokenizer(),
                                 &local_->pool(),
                                 model_path_,
                                 threads_,
                                 nullptr,
                                 local_drafters_.get()};
  return client::RunTokens(prompt, request, context, chains, on_token);
}

}  // namespace strata::cli
