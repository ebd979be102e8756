// What `strata chat` and `strata serve` generate with: a swarm (through the SDK's SwarmClient)
// or, for chat, the whole model in this process. Both give sessions over which
// client::Generate runs with prompt tokens built by the caller (multi-turn templates).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/drafter.h"
#include "client/local_model.h"
#include "client/session.h"
#include "client/swarm_client.h"
#include "model/llama.h"
#include "text/tokenizer.h"

namespace strata::cli {

class Engine {
 public:
  // Through the swarm of `coordinators`, with the local copy of the model at `model_path`.
  static absl::StatusOr<std::unique_ptr<Engine>> Swarm(const std::vector<std::string>& coordinators,
                                                       const std::string& model_path,
                                                       int threads);
  // Every layer in this process.
  static absl::StatusOr<std::unique_ptr<Engine>> Local(const std::string& model_path,
                                                       int threads,
                                                       bool show_progress);

  const text::Tokenizer& tokenizer() const;
  const model::Model& model() const { return *model_; }
  // Positions a session may hold (the model's training context).
  int context_length() const;
  bool local() const { return local_ != nullptr; }

  // A fresh session (swarm: a route from the coordinators and a session on every hop).
  // Thread-safe for the swarm engine. UNAVAILABLE when no route can be had.
  absl::StatusOr<std::unique_ptr<client::InferenceSession>> NewSession();
  // Generates from `prompt` with request.speculative (drafts verified through fresh chains; the
  // drafter stays loaded, with what it learned, for the next call). request.prompt is not used.
  absl::StatusOr<GenerateResult> Speculate(std::span<const int32_t> prompt,
                                           const GenerateRequest& request,
                                           const TokenCallback& on_token);

 private:
  Engine() = default;
  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<client::SwarmClient> swarm_;
  std::unique_ptr<client::LocalModel> local_;
  std::string model_path_;
  int threads_ = 0;
  std::unique_ptr<client::DrafterCache> local_drafters_;
};

}  // namespace strata::cli
