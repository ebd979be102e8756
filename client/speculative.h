// Speculative decoding spread across the chain.
//
// The client drafts tokens (a Drafter) and verifies them through the route in one pass: the rows
// of the pass are the next unverified tokens, and the logits of each row decide the token after
// it. A draft is accepted when it equals the token the target samples at that position with the
// same sampler and the same (seed, position) draw as plain decoding, so greedy and seeded
// sampling give exactly the plain output. With `rejection_sampling`, drafts are instead accepted
// with probability min(1, p/q) (the distribution is preserved, the tokens are not).
//
// Modes:
//   kChain      one run at a time: the unverified tokens plus up to gamma drafts (M1).
//   kTree       one run of a draft tree grown best first up to a node budget (M2); tree rows see
//               the committed text and their ancestors only; the accepted branch is committed.
//   kPipelined  up to max_in_flight runs along the chain at once, each drafting beyond the
//               previous one; a rejection cancels the runs it invalidates (M3).
//   With several chains (replicas of the spans), pipelined runs are spread over them; each
//   chain catches up on tokens it has not seen inside its next run (M4, DSI).
// gamma adapts to the measured pass latency and acceptance rate (gamma 0 is plain decoding),
// so speculation is not slower than plain decoding.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "client/chain.h"
#include "client/drafter.h"
#include "client/gamma_controller.h"
#include "client/generate.h"
#include "common/thread_pool.h"
#include "model/llama.h"
#include "model/verify.h"
#include "text/tokenizer.h"

namespace strata::client {

struct SpeculativeOptions {
  enum class Mode { kChain, kTree, kPipelined };
  Mode mode = Mode::kChain;
  int gamma = 4;  // drafts per run (the start value when adaptive)
  int max_gamma = 16;
  bool adaptive = true;
  int tree_budget = 16;   // draft nodes per tree (at most 63 leaves)
  int tree_branch = 3;    // alternatives tried per node
  int max_in_flight = 6;  // most pipelined runs in flight (PlanPipeline picks)
  bool rejection_sampling = false;
  // Last-hop verification: the node serving the last layers decides the tokens with the model's
  // head and answers with them, instead of the client computing logits from returned hidden
  // states (chain, pipelined and dsi; not trees).
  bool verify_at_last_hop = false;
  // Whether the drafter competes with the chain for the same cores; when it does not, drafts
  // made while runs are in flight cost only their rows (see GammaController::MinSurvival).
  bool drafter_shares_cores = false;
  // What earlier requests learned (pass cost, acceptance, drafting cost), used and updated
  // instead of starting afresh when adaptive; not owned. Null: learn from this request alone.
  GammaController* learned = nullptr;
};

struct SpeculativeStats {
  int passes = 0;       // runs whose results were used
  int drafted = 0;      // draft rows sent
  int accepted = 0;     // drafts accepted
  int wasted_rows = 0;  // rows computed (or cancelled) whose results were not used
  int cancelled_runs = 0;
  int emitted = 0;  // tokens generated
  double accepted_per_pass() const { return passes ? double(accepted) / passes : 0; }
};

using model::VerifyDraft;

class SpeculativeDecoder {
 public:
  // `chains`: one, or several over replicated spans (DSI). None is owned; each must start empty.
  SpeculativeDecoder(const model::Embedder* embedder,
                     const model::Head* head,
                     std::vector<Chain*> chains,
                     ThreadPool* pool,
                     const text::Tokenizer* tokenizer,
                     Drafter* drafter,
                     SpeculativeOptions options);

  absl::StatusOr<Generation> Generate(std::span<const int32_t> prompt,
                                      const GenerateOptions& options,
                                      const strata::TokenCallback& on_token = nullptr);
  const SpeculativeStats& stats() const { return stats_; }

 private:
  // A request's loop, on this decoder's members: chain and pipelined modes, and tree mode.
  friend class SpeculativeRuns;
  friend class SpeculativeTree;

  // Chain and pipelined modes (SpeculativeRuns), and tree mode (SpeculativeTree).
  absl::StatusOr<Generation> GenerateRuns(std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const strata::TokenCallback& on_token);
  absl::StatusOr<Generation> GenerateTree(std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const strata::TokenCallback& on_token);
  // The target's token for `position` from `logits` (its row is position - 1), given the text
  // before it, and whether `draft` (the drafter's proposal there, or -1) is accepted. Drafters
  // propose their most likely token, so for rejection sampling q is one-hot on the draft,
  // whatever probability the drafter gave it.
  int32_t Decide(std::span<const float> logits,
                 int64_t position,
                 std::span<const int32_t> history,
                 int32_t draft,
                 bool* accepted);
  // What the last hop needs to verify a run whose out rows run from position `out_first` to
  // `end` - 1: the sampler, the history the repetition penalty sees, the drafts known now.
  model::VerifySpec VerifyAt(std::span<const int32_t> tokens, int32_t out_first, int32_t end) const;
  // Logits for out rows (rows x n_embd of final hidden states).
  void Logits(const std::vector<float>& hidden, int64_t rows);
  void Learn(int rows, double ms, int drafted, int accepted);

  const model::Embedder* embedder_;
  const model::Head* head_;
  std::vector<Chain*> chains_;
  ThreadPool* pool_;
  const text::Tokenizer* tokenizer_;
  Drafter* drafter_;
  SpeculativeOptions options_;
  std::unique_ptr<model::Sampler> sampler_;
  SpeculativeStats stats_;
  model::ForwardScratch scratch_;
  std::vector<float> logits_;
  GammaController own_control_;
  GammaController& gamma_control_;  // own_control_, or options.learned
};

}  // namespace strata::client
