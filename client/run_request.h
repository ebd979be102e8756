// Runs a GenerateRequest (plain or speculative) over chains the caller opened: shared by the
// swarm client and local generation.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/chain.h"
#include "client/drafter.h"
#include "common/thread_pool.h"
#include "model/llama.h"
#include "strata/client.h"
#include "text/tokenizer.h"

namespace strata::client {

struct RequestContext {
  const model::Embedder* embedder = nullptr;
  const model::Head* head = nullptr;
  const text::Tokenizer* tokenizer = nullptr;
  ThreadPool* pool = nullptr;
  std::string model_path;  // the target file at the client (self:K drafts from it)
  int threads = 0;         // for a draft model
  // Used instead of the drafter request.speculative.drafter names (speculation then happens
  // whatever that says); not owned. Benchmarks pass drafters the public options cannot name (the
  // oracle).
  Drafter* drafter = nullptr;
  // Where drafters named by the request are taken from (null: made for this request alone).
  DrafterCache* drafters = nullptr;
  // With `drafter`: what its cost model learned in earlier requests, per mode, carried on to the
  // next as a cached drafter's is (null: this request learns alone).
  DrafterCache::Learned* learned = nullptr;
};

// How many chains `request` wants: its replicas for dsi, else 1.
int ChainsFor(const GenerateRequest& request);

// `chains` must be fresh (no text yet); the result's route is left empty for the caller.
absl::StatusOr<strata::GenerateResult> RunRequest(const GenerateRequest& request,
                                                  const RequestContext& context,
                                                  std::vector<Chain*> chains,
                                                  const strata::TokenCallback& on_token);
// The same with the prompt's tokens given (a conversation the caller templated itself):
// request.prompt, chat and system are not used.
absl::StatusOr<strata::GenerateResult> RunTokens(std::span<const int32_t> prompt,
                                                 const GenerateRequest& request,
                                                 const RequestContext& context,
                                                 std::vector<Chain*> chains,
                                                 const strata::TokenCallback& on_token);

}  // namespace strata::client
