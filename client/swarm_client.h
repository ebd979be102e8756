// The SDK's Client over a swarm: routes from the coordinators, sessions over RemoteChains.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/drafter.h"
#include "client/remote_chain.h"
#include "client/session.h"
#include "common/thread_pool.h"
#include "model/llama.h"
#include "strata/client.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "text/tokenizer.h"

namespace strata::client {

class SwarmClient final : public Client {
 public:
  static absl::StatusOr<std::unique_ptr<SwarmClient>> Create(const ClientOptions& options);

  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request,
                                          const TokenCallback& on_token) override;
  // Generate with `drafter` (not owned; null: the one request.speculative.drafter names), for
  // benchmarks whose drafters the public options cannot name (the oracle). `learned` (may be
  // null) carries what the requests with such drafters learn from one request to the next.
  absl::StatusOr<GenerateResult> GenerateWith(const GenerateRequest& request,
                                              Drafter* drafter,
                                              const TokenCallback& on_token,
                                              DrafterCache::Learned* learned = nullptr);
  // Generate from prompt tokens the caller templated itself (a multi-turn conversation);
  // request.prompt, chat and system are not used.
  absl::StatusOr<GenerateResult> GenerateTokens(std::span<const int32_t> prompt,
                                                const GenerateRequest& request,
                                                const TokenCallback& on_token);
  // Loads the drafter a --speculative value names (e.g. "draft:PATH") now rather than in the
  // first request that uses it; requests reuse it either way. No-op for "none".
  absl::Status LoadDrafter(const strata::Drafter& drafter);
  absl::StatusOr<std::unique_ptr<Session>> OpenSession() override;
  absl::StatusOr<std::vector<int32_t>> Tokenize(const GenerateRequest& request) const override;
  std::string Detokenize(const std::vector<int32_t>& ids) const override;
  int hidden_size() const override { return model_->hparams().n_embd; }
  int vocab_size() const override { return model_->hparams().n_vocab; }

  // A route over layers [start_layer, L) from the coordinators (tried in order; the first that
  // answers wins).
  absl::StatusOr<v1::RouteResponse> GetRoute(int start_layer = 0,
                                             const std::vector<std::string>& exclude = {});
  // Tells every coordinator that `node_id` failed this client.
  void ReportFailure(const std::string& node_id, const absl::Status& why);
  // A failover-capable chain over a fresh route, avoiding the nodes in `avoid` when it can.
  absl::StatusOr<std::unique_ptr<RemoteChain>> OpenChain(std::vector<std::string> avoid = {});
  // A session over a fresh chain; `chain` (if set) receives the chain the session owns.
  absl::StatusOr<std::unique_ptr<InferenceSession>> NewInferenceSession(
      std::vector<HopInfo>* route = nullptr, RemoteChain** chain = nullptr);

  const text::Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  SwarmClient() = default;
  // A request over fresh chains; `prompt` (null: request's own prompt) as for GenerateTokens.
  absl::StatusOr<GenerateResult> Run(const GenerateRequest& request,
                                     const std::span<const int32_t>* prompt,
                                     Drafter* drafter,
                                     const TokenCallback& on_token,
                                     DrafterCache::Learned* learned = nullptr);

  ClientOptions options_;
  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
  std::unique_ptr<model::Embedder> embedder_;
  std::unique_ptr<model::Head> head_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<std::unique_ptr<v1::Coordinator::Stub>> coordinators_;
  std::unique_ptr<DrafterCache> drafters_;
  // Last: it closes the chains of finished requests before anything else goes.
  std::unique_ptr<ChainCloser> closer_ = std::make_unique<ChainCloser>();
};

}  // namespace strata::client
