// Verifying drafts: deciding, from the target's logits, which proposed tokens a generation keeps.
// The client does it for the runs it gets hidden states back for; with last-hop verification the
// node serving the last layers does it with the model's head and answers with tokens only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "model/llama.h"
#include "model/sampling.h"

namespace strata::model {

// The token the target settles on at `position` (whose logits come from the row before it), given
// the text before it, and whether the drafter's proposal there (`draft`, -1 for none) is accepted.
// Exact match (default): the target's own draw decides, as in plain decoding. Rejection
// sampling: the draft is accepted with probability min(1, p(draft) / draft_prob), else a token
// is drawn from p without the draft — the target distribution is preserved (drafters here are
// deterministic, so q is one-hot and draft_prob is 1).
int32_t VerifyDraft(const Sampler& sampler,
                    std::span<const float> logits,
                    int64_t position,
                    std::span<const int32_t> history,
                    int32_t draft,
                    float draft_prob,
                    bool rejection_sampling,
                    bool* accepted);

// A run of consecutive rows to verify: row i's logits decide position first_position + i.
struct VerifySpec {
  SamplingParams sampling;
  bool rejection_sampling = false;
  int64_t first_position = 0;
  // The text before first_position, or at least the last sampling.repeat_last_n tokens of it
  // (what the repetition penalty sees; may be empty when the penalty is off).
  std::vector<int32_t> history;
  // drafts[i]: the proposal for position first_position + i, -1 for none; one per row.
  std::vector<int32_t> drafts;
};

// The position the first of a run's out rows decides (the one after it), given the out rows'
// positions in order; INVALID_ARGUMENT unless they are consecutive (a chain of drafts).
absl::StatusOr<int64_t> FirstDecidedPosition(std::span<const int32_t> out_positions);

// INVALID_ARGUMENT when `spec` cannot be verified over `rows` rows of a model with `n_vocab`
// tokens (sampling parameters, draft count, token ids), naming what is wrong.
absl::Status ValidateVerifySpec(const VerifySpec& spec, int64_t rows, int n_vocab);

// Decides positions first_position, first_position + 1, ... from `logits` (rows x n_vocab) until
// a draft is not accepted, or the rows run out: the accepted drafts, then the target's own token
// (the correction, or the token after the last row). `spec` must be valid.
std::vector<int32_t> VerifyRows(std::span<const float> logits, int n_vocab, const VerifySpec& spec);

// Verification where the final hidden states are: the model's head, then VerifyRows.
class Verifier {
 public:
  static absl::StatusOr<std::unique_ptr<Verifier>> Load(std::shared_ptr<const Model> model,
                                                        ThreadPool* pool);
  // `hidden`: rows x n_embd final hidden states.
  absl::StatusOr<std::vector<int32_t>> Verify(const float* hidden,
                                              int64_t rows,
                                              const VerifySpec& spec);

 private:
  Verifier() = default;
  std::unique_ptr<Head> head_;
  ThreadPool* pool_ = nullptr;
  ForwardScratch scratch_;
  std::vector<float> logits_;
};

}  // namespace strata::model
