#include "client/run_request.h"

#include <optional>

#include "client/drafter.h"
#include "client/generate.h"
#include "client/prompt.h"
#include "client/session.h"
#include "client/speculative.h"
#include "common/status.h"
#include "common/strings.h"

namespace strata::client {
namespace {

SpeculativeOptions::Mode DecoderMode(strata::SpeculativeMode mode) {
  switch (mode) {
    case strata::SpeculativeMode::kChain:
      return SpeculativeOptions::Mode::kChain;
    case strata::SpeculativeMode::kTree:
      return SpeculativeOptions::Mode::kTree;
    case strata::SpeculativeMode::kPipelined:
    case strata::SpeculativeMode::kDsi:  // pipelined runs over several chains
      break;
  }
  return SpeculativeOptions::Mode::kPipelined;
}

strata::GenerateResult ToResult(Generation g) {
  strata::GenerateResult out;
  out.text = std::move(g.text);
  out.token_ids = std::move(g.tokens);
  out.prompt_tokens = g.prompt_tokens;
  out.ttft_ms = g.ttft_ms;
  out.decode_tokens_per_s = g.decode_tokens_per_s;
  out.finish_reason = g.finish_reason;
  return out;
}

}  // namespace

int ChainsFor(const GenerateRequest& request) {
  return request.speculative.drafter.enabled() &&
                 request.speculative.mode == strata::SpeculativeMode::kDsi
             ? std::max(1, request.speculative.replicas)
             : 1;
}

absl::StatusOr<strata::GenerateResult> RunRequest(const GenerateRequest& request,
                                                  const RequestContext& context,
                                                  std::vector<Chain*> chains,
                                                  const strata::TokenCallback& on_token) {
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(*context.tokenizer, request));
  return RunTokens(prompt, request, context, std::move(chains), on_token);
}

absl::StatusOr<strata::GenerateResult> RunTokens(std::span<const int32_t> prompt,
                                                 const GenerateRequest& request,
                                                 const RequestContext& context,
                                                 std::vector<Chain*> chains,
                                                 const strata::TokenCallback& on_token) {
  if (chains.empty()) return absl::InvalidArgumentError("no chain");
  const GenerateOptions options = ToGenerateOptions(request);
  const strata::SpeculativeOptions& so = request.speculative;
  if (!so.drafter.enabled() && context.drafter == nullptr) {
    InferenceSession session(context.embedder, context.head, chains[0], context.pool);
    ASSIGN_OR_RETURN(Generation g,
                     Generate(session, *context.tokenizer, prompt, options, on_token));
    return ToResult(std::move(g));
  }
  std::unique_ptr<Drafter> owned;
  std::optional<DrafterCache::Lease> lease;
  Drafter* drafter = context.drafter;
  if (drafter == nullptr && context.drafters != nullptr) {
    ASSIGN_OR_RETURN(DrafterCache::Lease l, context.drafters->Take(DrafterName(so.drafter)));
    lease.emplace(std::move(l));
    drafter = lease->get();
  } else if (drafter == nullptr) {
    ASSIGN_OR_RETURN(
        owned,
        MakeDrafter(
            DrafterName(so.drafter), context.model_path, context.head->n_vocab(), context.threads));
    drafter = owned.get();
  }
  SpeculativeOptions o;
  o.mode = DecoderMode(so.mode);
  o.gamma = so.gamma;
  o.adaptive = so.adaptive;
  o.tree_budget = so.tree_budget;
  o.max_in_flight = so.max_in_flight;
  o.rejection_sampling = so.rejection_sampling;
  o.verify_at_last_hop = so.verify_at_last_hop;
  o.drafter_shares_cores = so.drafter_shares_cores;
  // The drafter's cost model carries over to its next request.
  // (Per mode and where runs are verified: the pass costs differ.)
  const std::string key =
      StrCat(SpeculativeModeName(so.mode), so.verify_at_last_hop ? ", last hop" : "");
  std::shared_ptr<void>* learned = lease             ? &lease->learned(key)
                                   : context.learned ? &(*context.learned)[key]
                                                     : nullptr;
  if (learned != nullptr && o.adaptive) {
    if (!*learned) *learned = std::make_shared<GammaController>(o.gamma, o.max_gamma, true);
    o.learned = static_cast<GammaController*>(learned->get());
  }
  SpeculativeDecoder decoder(context.embedder,
                             context.head,
                             std::move(chains),
                             context.pool,
                             context.tokenizer,
                             drafter,
                             o);
  ASSIGN_OR_RETURN(Generation g, decoder.Generate(prompt, options, on_token));
  strata::GenerateResult out = ToResult(std::move(g));
  out.passes = decoder.stats().passes;
  out.accepted_per_pass = decoder.stats().accepted_per_pass();
  out.wasted_rows = decoder.stats().wasted_rows;
  return out;
}

}  // namespace strata::client
