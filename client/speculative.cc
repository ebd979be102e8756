#include "client/speculative.h"

#include <algorithm>

#include "client/speculative_runs.h"
#include "client/speculative_tree.h"
#include "common/status.h"
#include "model/sampling.h"

namespace strata::client {

SpeculativeDecoder::SpeculativeDecoder(const model::Embedder* embedder,
                                       const model::Head* head,
                                       std::vector<Chain*> chains,
                                       ThreadPool* pool,
                                       const text::Tokenizer* tokenizer,
                                       Drafter* drafter,
                                       SpeculativeOptions options)
    : embedder_(embedder),
      head_(head),
      chains_(std::move(chains)),
      pool_(pool),
      tokenizer_(tokenizer),
      drafter_(drafter),
      options_(options),
      own_control_(options.gamma, options.max_gamma, options.adaptive),
      gamma_control_(options.learned != nullptr && options.adaptive ? *options.learned
                                                                    : own_control_) {}

absl::StatusOr<Generation> SpeculativeDecoder::Generate(std::span<const int32_t> prompt,
                                                        const GenerateOptions& options,
                                                        const strata::TokenCallback& on_token) {
  RETURN_IF_ERROR(options.sampling.Validate());
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (options.max_tokens <= 0) return absl::InvalidArgumentError("max_tokens must be positive");
  if (chains_.empty()) return absl::InvalidArgumentError("no chain to verify on");
  sampler_ = std::make_unique<model::Sampler>(options.sampling);
  stats_ = SpeculativeStats();
  if (options_.mode == SpeculativeOptions::Mode::kTree) {
    if (options_.verify_at_last_hop) {
      return absl::InvalidArgumentError(
          "the last hop verifies chains of drafts; draft trees are "
          "verified at the client (use chain, pipelined or dsi)");
    }
    if (options_.rejection_sampling) {
      return absl::InvalidArgumentError(
          "draft trees verify by exact match; use chain mode for "
          "rejection sampling");
    }
    return GenerateTree(prompt, options, on_token);
  }
  return GenerateRuns(prompt, options, on_token);
}

int32_t SpeculativeDecoder::Decide(std::span<const float> logits,
                                   int64_t position,
                                   std::span<const int32_t> history,
                                   int32_t draft,
                                   bool* accepted) {
  return VerifyDraft(*sampler_,
                     logits,
                     position,
                     history,
                     draft,
                     /*draft_prob=*/1.0f,
                     options_.rejection_sampling,
                     accepted);
}

model::VerifySpec SpeculativeDecoder::VerifyAt(std::span<const int32_t> tokens,
                                               int32_t out_first,
                                               int32_t end) const {
  model::VerifySpec spec;
  spec.sampling = sampler_->params();
  spec.rejection_sampling = options_.rejection_sampling;
  spec.first_position = out_first + 1;
  const model::SamplingParams& sp = spec.sampling;
  if (sp.repeat_penalty != 1.0f && sp.repeat_last_n > 0) {
    const size_t keep = std::min<size_t>(static_cast<size_t>(out_first) + 1, sp.repeat_last_n);
    spec.history.assign(tokens.begin() + (out_first + 1 - keep), tokens.begin() + out_first + 1);
  }
  for (int32_t p = out_first; p < end; ++p) {
    spec.drafts.push_back(p + 1 < static_cast<int32_t>(tokens.size()) ? tokens[p + 1] : -1);
  }
  return spec;
}

void SpeculativeDecoder::Logits(const std::vector<float>& hidden, int64_t rows) {
  logits_.resize(static_cast<size_t>(rows) * head_->n_vocab());
  head_->Logits(hidden.data(), rows, logits_.data(), *pool_, scratch_);
}

void SpeculativeDecoder::Learn(int rows, double ms, int drafted, int accepted) {
  gamma_control_.Observe(rows, ms, drafted, accepted);
}

absl::StatusOr<Generation> SpeculativeDecoder::GenerateRuns(std::span<const int32_t> prompt,
                                                            const GenerateOptions& options,
                                                            const strata::TokenCallback& on_token) {
  return SpeculativeRuns(this, prompt, options, on_token).Generate();
}

absl::StatusOr<Generation> SpeculativeDecoder::GenerateTree(std::span<const int32_t> prompt,
                                                            const GenerateOptions& options,
                                                            const strata::TokenCallback& on_token) {
  return SpeculativeTree(this, prompt, options, on_token).Generate();
}

}  // namespace strata::client
