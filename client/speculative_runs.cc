#include "client/speculative_runs.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/status.h"

namespace strata::client {

SpeculativeRuns::SpeculativeRuns(SpeculativeDecoder* decoder,
                                 std::span<const int32_t> prompt,
                                 const GenerateOptions& options,
                                 const strata::TokenCallback& on_token)
    : decoder_(*decoder),
      chains_(decoder->chains_),
      drafter_(decoder->drafter_),
      options_(decoder->options_),
      stats_(decoder->stats_),
      gamma_control_(decoder->gamma_control_),
      max_tokens_(options.max_tokens),
      width_(decoder->embedder_->n_embd()),
      n_chains_(decoder->chains_.size()),
      pipelined_(decoder->options_.mode == SpeculativeOptions::Mode::kPipelined),
      emitter_(*decoder->tokenizer_, options, on_token, &result_),
      tokens_(prompt.begin(), prompt.end()),
      probs_(tokens_.size(), 1.0f),
      certain_(static_cast<int32_t>(tokens_.size())),
      fed_(n_chains_, 0),
      confirmed_(n_chains_, 0),
      start_(absl::Now()) {
  result_.prompt_tokens = static_cast<int>(prompt.size());
}

absl::StatusOr<Generation> SpeculativeRuns::Generate() {
  // What a draft costs until one is measured here: the drafter's own measure.
  gamma_control_.ExpectDraftCost(drafter_->token_ms());
  while (true) {
    Reap();
    const GammaController::Pipeline plan = Plan();
    RETURN_IF_ERROR(SendRuns(plan));
    if (runs_.empty()) break;
    if (emitter_.done()) {
      // Speculation still in flight is not waited for: the request has its tokens, and the
      // chains are not used again.
      for (const Run& r : runs_) stats_.wasted_rows += r.count;
      break;
    }
    Run run = runs_.front();
    runs_.pop_front();
    UseTheWait(run, plan);
    RETURN_IF_ERROR(Collect(run));
  }
  emitter_.Finish();
  return std::move(result_);
}

GammaController::Pipeline SpeculativeRuns::Plan() const {
  return pipelined_
             ? gamma_control_.PlanPipeline(options_.max_in_flight, options_.drafter_shares_cores)
             : GammaController::Pipeline{gamma_control_.gamma(), 1};
}

absl::Status SpeculativeRuns::SendRuns(const GammaController::Pipeline& plan) {
  const int max_runs = plan.runs;
  while (!emitter_.done() && static_cast<int>(runs_.size()) < max_runs) {
    const size_t c = ChooseChain(max_runs);
    const int gamma = ChooseGamma(plan);
    const int32_t want = Want(gamma, max_runs);
    if (static_cast<int32_t>(tokens_.size()) < want && !DraftUpTo(want)) {
      break;  // the front run's answer first; this run is drafted on after it
    }
    const int32_t end =
        std::min<int32_t>(static_cast<int32_t>(tokens_.size()), std::max(want, certain_));
    if (end <= fed_[c]) break;  // nothing new to send (the drafter has no guess)
    RETURN_IF_ERROR(Send(c, end));
  }
  return absl::OkStatus();
}

size_t SpeculativeRuns::ChooseChain(int max_runs) const {
  const size_t usable = std::min(n_chains_, static_cast<size_t>(max_runs));
  const int32_t most_fed = *std::max_element(fed_.begin(), fed_.begin() + usable);
  size_t c = 0;
  while (!Eligible(c, most_fed)) ++c;
  for (size_t i = c + 1; i < usable; ++i) {
    if (!Eligible(i, most_fed)) continue;
    if (InFlight(i) < InFlight(c) || (InFlight(i) == InFlight(c) && fed_[i] > fed_[c])) {
      c = i;
    }
  }
  return c;
}

bool SpeculativeRuns::Eligible(size_t c, int32_t most_fed) const {
  return fed_[c] == most_fed ||
         gamma_control_.catch_up_row_ms() * (most_fed - fed_[c]) < gamma_control_.base_ms();
}

int SpeculativeRuns::ChooseGamma(const GammaController::Pipeline& plan) {
  int gamma = drafting_off_ ? 0 : gamma_control_.NextGamma(/*alone=*/runs_.empty());
  // Pipelined runs carry the plan's drafts (a plain step or a probe stays as it is).
  if (gamma > 0 && gamma == gamma_control_.gamma()) gamma = plan.gamma;
  if (gamma > 0 && drafted_before_ && drafter_->Unread(tokens_) > kCatchUp &&
      !ReadPays(/*probe=*/gamma_control_.gamma() == 0)) {
    drafting_off_ = true;  // the drafter would first read more than drafting can save
    gamma = 0;
  }
  return gamma;
}

int32_t SpeculativeRuns::Want(int gamma, int max_runs) const {
  if (!drafted_before_) return static_cast<int32_t>(tokens_.size());
  const int depth_limit = max_runs * (gamma + 1);
  const int32_t sent = *std::max_element(fed_.begin(), fed_.end());
  return std::min<int32_t>(std::max(sent, certain_ - 1) + gamma + 1, certain_ + depth_limit);
}

bool SpeculativeRuns::DraftUpTo(int32_t want) {
  // A drafter left idle for a while (gamma 0) first reads the text it missed: that is not what
  // a draft costs.
  if (drafter_->Unread(tokens_) > kCatchUp) drafter_->Read(tokens_);
  const absl::Time draft_start = absl::Now();
  const int32_t before = static_cast<int32_t>(tokens_.size());
  // With runs in flight, an answer that arrives while a costly drafter works comes first: it may
  // reject what is being drafted, and the drafts would only go further ahead of what is settled.
  // (Free drafters finish first: that costs the answer nothing.)
  const bool interruptible = !runs_.empty() && gamma_control_.draft_ms() * (want - before) >= 1.0;
  const double min_survival =
      gamma_control_.MinSurvival(!runs_.empty() && !options_.drafter_shares_cores);
  while (static_cast<int32_t>(tokens_.size()) < want && Survival() >= min_survival &&
         !(interruptible && FrontAnswered()) && DraftOne()) {
  }
  gamma_control_.ObserveDraft(static_cast<int>(tokens_.size()) - before,
                              absl::ToDoubleMilliseconds(absl::Now() - draft_start));
  return !(static_cast<int32_t>(tokens_.size()) < want && interruptible && FrontAnswered());
}

bool SpeculativeRuns::FrontAnswered() const {
  return chains_[runs_.front().chain]->RunReady(runs_.front().id);
}

absl::Status SpeculativeRuns::Send(size_t c, int32_t end) {
  const int32_t first = fed_[c];
  const int32_t count = end - first;
  // Logits are needed from the last settled token on (earlier rows only catch the chain up).
  const int32_t out_first = std::max(first, certain_ - 1);
  std::vector<model::Row> rows(count);
  for (int32_t i = 0; i < count; ++i) rows[i] = {first + i, model::SeqBit(0)};
  std::vector<int32_t> out_rows;
  for (int32_t p = out_first; p < end; ++p) out_rows.push_back(p - first);
  hidden_.resize(static_cast<size_t>(count) * width_);
  RETURN_IF_ERROR(decoder_.embedder_->Embed(std::span<const int32_t>(tokens_).subspan(first, count),
                                            hidden_.data()));
  uint64_t id = 0;
  if (options_.verify_at_last_hop) {
    ASSIGN_OR_RETURN(
        id,
        chains_[c]->SubmitVerifiedRun(
            rows, hidden_.data(), out_rows, decoder_.VerifyAt(tokens_, out_first, end)));
  } else {
    ASSIGN_OR_RETURN(id, chains_[c]->SubmitRun(rows, hidden_.data(), out_rows));
  }
  Run run;
  run.chain = static_cast<int>(c);
  run.id = id;
  run.first = first;
  run.count = count;
  run.out_first = out_first;
  run.drafted = std::max(0, end - std::max(first, certain_));
  run.alone = runs_.empty() && stale_.empty();
  run.sent = absl::Now();
  runs_.push_back(run);
  fed_[c] = end;
  stats_.drafted += run.drafted;
  return absl::OkStatus();
}

void SpeculativeRuns::UseTheWait(Run& run, const GammaController::Pipeline& plan) {
  if (!drafted_before_ && !run.cancelled && !WaitForPlainStep()) {
    // While a pass is in flight (the prompt's, or after a first plain step the next one): the
    // drafter reads the text and drafts the next run's tokens (the first is checked against
    // this pass's own token).
    const int gamma = plan.gamma;
    std::vector<DraftToken> drafts;
    if (gamma > 0 && !ReadPays(/*probe=*/false)) {
      drafting_off_ = true;
    } else if (gamma > 0) {
      drafts = drafter_->Draft(tokens_, gamma);
      run.alone = false;  // it shared the machine with the drafter: no measure of a step
    }
    for (const DraftToken& d : drafts) {
      tokens_.push_back(d.token);
      probs_.push_back(d.prob);
    }
    drafted_before_ = true;
  } else if (drafted_before_ && !drafting_off_ && !run.cancelled && gamma_control_.ProbeDue() &&
             drafter_->Unread(tokens_) > kCatchUp) {
    // The next run probes an idle drafter: it reads the text it missed while this run is in
    // flight, rather than in front of the probe.
    if (ReadPays(/*probe=*/true)) {
      drafter_->Read(tokens_);
      run.alone = false;
    } else {
      drafting_off_ = true;  // the probe is left to a request it could pay off in
    }
  }
  // (Not during a plain step: it is sent alone to measure what a step costs by itself.)
  if (pipelined_ && !run.cancelled && gamma_control_.gamma() > 0 && run.drafted > 0) {
    // Continuous speculation: while the oldest run is in flight, the drafter keeps going beyond
    // the last run, up to one more run's worth (off the critical path, so not counted as
    // drafting cost); the next run sends what it found.
    const int32_t limit = certain_ + (plan.runs + 1) * (plan.gamma + 1);
    const double min_survival = gamma_control_.MinSurvival(!options_.drafter_shares_cores);
    while (!chains_[run.chain]->RunReady(run.id) && static_cast<int32_t>(tokens_.size()) < limit &&
           Survival() >= min_survival && DraftOne()) {
    }
  }
}

absl::Status SpeculativeRuns::Collect(const Run& run) {
  const int32_t out_count = run.first + run.count - run.out_first;
  absl::Status st;
  if (options_.verify_at_last_hop) {
    st = chains_[run.chain]->WaitVerdict(run.id, &verdict_);
  } else {
    out_.resize(static_cast<size_t>(out_count) * width_);
    st = chains_[run.chain]->WaitRun(run.id, out_.data());
  }
  if (run.cancelled || st.code() == absl::StatusCode::kCancelled) {
    stats_.wasted_rows += run.count;
    return absl::OkStatus();
  }
  if (st.code() == absl::StatusCode::kAborted) {
    Restart(run);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(st);
  if (options_.verify_at_last_hop && verdict_.empty()) {
    return absl::InternalError("a verified run came back without tokens");
  }
  Settle(run, out_count);
  return absl::OkStatus();
}

void SpeculativeRuns::Restart(const Run& run) {
  stats_.wasted_rows += run.count;
  const size_t c = run.chain;
  for (Run& r : runs_) {
    if (r.chain == run.chain) r.cancelled = true;
  }
  const int32_t keep = std::min(confirmed_[c], certain_);
  chains_[c]->TruncateAsync(0, keep);
  fed_[c] = keep;
}

void SpeculativeRuns::Settle(const Run& run, int32_t out_count) {
  confirmed_[run.chain] = std::max(confirmed_[run.chain], run.first + run.count);
  if (run.first == 0 && run.drafted == 0 && run.count > 1) {
    gamma_control_.ObservePrefill(run.count, absl::ToDoubleMilliseconds(absl::Now() - run.sent));
  }
  if (result_.prefill_ms == 0) {
    result_.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
  }
  // Verified at the last hop: its tokens from the first out row on, up to its first rejection.
  const int32_t decided = options_.verify_at_last_hop
                              ? std::min<int32_t>(out_count, static_cast<int32_t>(verdict_.size()))
                              : out_count;
  if (!options_.verify_at_last_hop) decoder_.Logits(out_, out_count);
  stats_.passes++;
  const int accepted = DecideRows(run, decided);
  // A run that shared the chain with others also waited for their compute: only its acceptance
  // is news, not its cost.
  decoder_.Learn(run.count,
                 run.alone ? absl::ToDoubleMilliseconds(absl::Now() - run.sent) : -1,
                 run.drafted,
                 accepted);
  if (emitter_.done()) Invalidate(certain_);  // drop the speculation still in flight
}

int SpeculativeRuns::DecideRows(const Run& run, int32_t decided) {
  int accepted_here = 0;
  bool rejected = false;
  for (int32_t i = 0; i < decided && !emitter_.done(); ++i) {
    const int32_t q = run.out_first + i;  // this row's logits decide position q + 1
    if (q != certain_ - 1) continue;      // decided already, or beyond a rejection
    const bool has_draft = q + 1 < static_cast<int32_t>(tokens_.size());
    const int32_t draft = has_draft ? tokens_[q + 1] : -1;
    bool accepted = false;
    const int32_t t = Verdict(i, q, has_draft, draft, &accepted);
    if (has_draft) gamma_control_.ObserveVerdict(probs_[q + 1], accepted);
    if (result_.ttft_ms == 0) {
      result_.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
      emitter_.MarkFirstToken();
    }
    if (accepted) {
      ++certain_;
      stats_.accepted++;
      ++accepted_here;
    } else {
      if (has_draft) {
        rejected = true;
        Invalidate(q + 1);
        tokens_.resize(q + 1);
        probs_.resize(q + 1);
      }
      tokens_.push_back(t);
      probs_.push_back(1.0f);
      certain_ = q + 2;
    }
    stats_.emitted++;
    emitter_.Push(t);
    if (rejected) break;
  }
  return accepted_here;
}

int32_t SpeculativeRuns::Verdict(
    int32_t i, int32_t q, bool has_draft, int32_t draft, bool* accepted) {
  if (options_.verify_at_last_hop) {
    // The last hop saw the drafts known when the run was sent, and otherwise drew the target's
    // own token: a draft made since is accepted when it equals that token.
    const int32_t t = verdict_[i];
    *accepted = has_draft && t == draft;
    return t;
  }
  const int vocab = decoder_.head_->n_vocab();
  return decoder_.Decide(
      std::span<const float>(decoder_.logits_).subspan(static_cast<size_t>(i) * vocab, vocab),
      q + 1,
      std::span<const int32_t>(tokens_).first(q + 1),
      draft,
      accepted);
}

int SpeculativeRuns::InFlight(size_t c) const {
  return static_cast<int>(std::count_if(runs_.begin(), runs_.end(), [&](const Run& r) {
    return r.chain == static_cast<int>(c) && !r.cancelled;
  }));
}

void SpeculativeRuns::Invalidate(int32_t pos) {
  std::vector<int32_t> cut(n_chains_, pos);
  for (Run& r : runs_) {
    if (!r.cancelled && r.first + r.count > pos) {
      r.cancelled = true;
      const uint64_t id[1] = {r.id};
      chains_[r.chain]->CancelRuns(id);
      stats_.cancelled_runs++;
    }
    if (r.cancelled) cut[r.chain] = std::min(cut[r.chain], r.first);
  }
  for (size_t c = 0; c < n_chains_; ++c) {
    if (fed_[c] > cut[c]) {
      chains_[c]->TruncateAsync(0, cut[c]);
      fed_[c] = cut[c];
      confirmed_[c] = std::min(confirmed_[c], cut[c]);
    }
  }
  // The truncates above follow every cancelled run on its chain: whatever a cancelled run still
  // computes is dropped there, so nothing waits for it.
  for (auto it = runs_.begin(); it != runs_.end();) {
    if (!it->cancelled) {
      ++it;
      continue;
    }
    stats_.wasted_rows += it->count;
    stale_.push_back(*it);
    it = runs_.erase(it);
  }
}

void SpeculativeRuns::Reap() {
  std::erase_if(stale_, [&](const Run& r) {
    if (!chains_[r.chain]->RunReady(r.id)) return false;
    if (options_.verify_at_last_hop) {
      (void)chains_[r.chain]->WaitVerdict(r.id, &scratch_tokens_);
    } else {
      scratch_.resize(static_cast<size_t>(r.first + r.count - r.out_first) * width_);
      (void)chains_[r.chain]->WaitRun(r.id, scratch_.data());
    }
    return true;
  });
}

double SpeculativeRuns::Survival() const {
  double s = 1;
  for (size_t i = certain_; i < tokens_.size(); ++i) s *= gamma_control_.Acceptance(probs_[i]);
  return s;
}

bool SpeculativeRuns::DraftOne() {
  std::vector<DraftToken> d = drafter_->Draft(tokens_, 1);
  if (d.empty()) return false;
  tokens_.push_back(d[0].token);
  probs_.push_back(d[0].prob);
  return true;
}

bool SpeculativeRuns::WaitForPlainStep() const {
  return options_.adaptive && gamma_control_.plain_ms() < 0 &&
         (drafter_->token_ms() >= 1.0 || drafter_->read_ms() * drafter_->Unread(tokens_) >= 1.0);
}

bool SpeculativeRuns::ReadPays(bool probe) const {
  if (!options_.adaptive) return true;
  const double cost = drafter_->read_ms() * drafter_->Unread(tokens_);
  if (cost <= 0) return true;
  return gamma_control_.Saving(max_tokens_ - stats_.emitted, probe) > cost;
}

}  // namespace strata::client
