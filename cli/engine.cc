#include "cli/engine.h"

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
  return e;
}

const model::Tokenizer& Engine::tokenizer() const {
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

}  // namespace strata::cli
