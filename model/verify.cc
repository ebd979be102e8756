#include "model/verify.h"

#include <algorithm>

#include "common/status.h"
#include "common/strings.h"

namespace strata::model {
namespace {

// Salts that separate the acceptance draw and the residual draw of rejection sampling from the
// plain sampling draw at the same position.
constexpr uint64_t kAcceptSalt = 0x61636365707421ull;
constexpr uint64_t kResidualSalt = 0x7265736964756full;

}  // namespace

int32_t VerifyDraft(const Sampler& sampler,
                    std::span<const float> logits,
                    int64_t position,
                    std::span<const int32_t> history,
                    int32_t draft,
                    float draft_prob,
                    bool rejection_sampling,
                    bool* accepted) {
  *accepted = false;
  if (!rejection_sampling || sampler.params().greedy()) {
    // Exact match: the target's own draw at this position decides, as in plain decoding.
    const int32_t t = sampler.Sample(logits, position, history);
    *accepted = draft >= 0 && t == draft;
    return t;
  }
  // Rejection sampling against a deterministic drafter (q is one-hot on the draft): accept with
  // probability p(draft); otherwise draw from p with the draft removed.
  std::vector<Candidate> p = sampler.Distribution(logits, history);
  const uint64_t seed = sampler.params().seed;
  if (draft >= 0) {
    double pd = 0;
    for (const auto& c : p) pd += c.token == draft ? c.prob : 0.0;
    if (PositionUniform(seed ^ kAcceptSalt, position) < std::min(1.0, pd / draft_prob)) {
      *accepted = true;
      return draft;
    }
    double rest = 0;
    for (const auto& c : p) rest += c.token == draft ? 0.0 : c.prob;
    double u = PositionUniform(seed ^ kResidualSalt, position) * rest, cum = 0;
    for (const auto& c : p) {
      if (c.token == draft) continue;
      cum += c.prob;
      if (u < cum) return c.token;
    }
    for (auto it = p.rbegin(); it != p.rend(); ++it) {
      if (it->token != draft) return it->token;
    }
    return draft;  // p is one-hot on the draft: it would have been accepted
  }
  return sampler.Sample(logits, position, history);
}

absl::StatusOr<int64_t> FirstDecidedPosition(std::span<const int32_t> out_positions) {
  if (out_positions.empty()) return absl::InvalidArgumentError("verification needs an out row");
  for (size_t i = 1; i < out_positions.size(); ++i) {
    if (out_positions[i] != out_positions[0] + static_cast<int32_t>(i)) {
      return absl::InvalidArgumentError(
          "verification needs out rows at consecutive positions (a chain of drafts)");
    }
  }
  return static_cast<int64_t>(out_positions[0]) + 1;
}

absl::Status ValidateVerifySpec(const VerifySpec& spec, int64_t rows, int n_vocab) {
  RETURN_IF_ERROR(spec.sampling.Validate());
  if (rows <= 0) return absl::InvalidArgumentError("verification needs at least one row");
  if (static_cast<int64_t>(spec.drafts.size()) != rows) {
    return absl::InvalidArgumentError(StrCat(
        "verification of ", rows, " rows got ", spec.drafts.size(), " drafts (one per row)"));
  }
  if (spec.first_position < 1) {
    return absl::InvalidArgumentError("verification must decide positions after the first");
  }
  for (int32_t d : spec.drafts) {
    if (d < -1 || d >= n_vocab) {
      return absl::InvalidArgumentError(
          StrCat("draft token ", d, " is outside the vocabulary [0, ", n_vocab, ") (or -1)"));
    }
  }
  for (int32_t t : spec.history) {
    if (t < 0 || t >= n_vocab) {
      return absl::InvalidArgumentError(
          StrCat("history token ", t, " is outside the vocabulary [0, ", n_vocab, ")"));
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> VerifyRows(std::span<const float> logits,
                                int n_vocab,
                                const VerifySpec& spec) {
  const Sampler sampler(spec.sampling);
  std::vector<int32_t> history = spec.history;
  std::vector<int32_t> out;
  for (size_t i = 0; i < spec.drafts.size(); ++i) {
    bool accepted = false;
    const int32_t t = VerifyDraft(sampler,
                                  logits.subspan(i * n_vocab, n_vocab),
                                  spec.first_position + static_cast<int64_t>(i),
                                  history,
                                  spec.drafts[i],
                                  /*draft_prob=*/1.0f,
                                  spec.rejection_sampling,
                                  &accepted);
    out.push_back(t);
    if (!accepted) break;
    history.push_back(t);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Verifier>> Verifier::Load(std::shared_ptr<const Model> model,
                                                         ThreadPool* pool) {
  auto v = std::unique_ptr<Verifier>(new Verifier());
  ASSIGN_OR_RETURN(v->head_, Head::Load(std::move(model)));
  v->pool_ = pool;
  return v;
}

absl::StatusOr<std::vector<int32_t>> Verifier::Verify(const float* hidden,
                                                      int64_t rows,
                                                      const VerifySpec& spec) {
  const int vocab = head_->n_vocab();
  RETURN_IF_ERROR(ValidateVerifySpec(spec, rows, vocab));
  logits_.resize(static_cast<size_t>(rows) * vocab);
  head_->Logits(hidden, rows, logits_.data(), *pool_, scratch_);
  return VerifyRows(logits_, vocab, spec);
}

}  // namespace strata::model
