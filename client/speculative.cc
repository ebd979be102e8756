#include "client/speculative.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <queue>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "model/sampling.h"

namespace strata::client {

struct SpeculativeDecoder::Run {
  int chain = 0;
  uint64_t id = 0;
  int32_t first = 0;      // position of its first row
  int32_t count = 0;      // rows
  int32_t out_first = 0;  // position of its first out row (out rows run to the last row)
  int drafted = 0;        // rows that were unverified drafts when it was sent
  bool cancelled = false;
  bool alone = false;  // nothing else was in flight when it was sent: its time is its own cost
  absl::Time sent;
};

SpeculativeDecoder::SpeculativeDecoder(const model::Embedder* embedder, const model::Head* head,
                                       std::vector<Chain*> chains, ThreadPool* pool,
                                       const text::Tokenizer* tokenizer, Drafter* drafter,
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
      return absl::InvalidArgumentError("the last hop verifies chains of drafts; draft trees are "
                                        "verified at the client (use chain, pipelined or dsi)");
    }
    if (options_.rejection_sampling) {
      return absl::InvalidArgumentError("draft trees verify by exact match; use chain mode for "
                                        "rejection sampling");
    }
    return GenerateTree(prompt, options, on_token);
  }
  return GenerateRuns(prompt, options, on_token);
}

int32_t SpeculativeDecoder::Decide(std::span<const float> logits, int64_t position,
                                   std::span<const int32_t> history, int32_t draft,
                                   bool* accepted) {
  return VerifyDraft(*sampler_, logits, position, history, draft, /*draft_prob=*/1.0f,
                     options_.rejection_sampling, accepted);
}

model::VerifySpec SpeculativeDecoder::VerifyAt(std::span<const int32_t> tokens,
                                               int32_t out_first, int32_t end) const {
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

GammaController::GammaController(int gamma, int max_gamma, bool adaptive)
    : gamma_(std::clamp(gamma, 0, max_gamma)), max_gamma_(max_gamma), adaptive_(adaptive) {}

double GammaController::Rate(int g) const {
  if (g == 0 && plain_ms_ >= 0) return 1 / std::max(1e-3, plain_ms_);
  const double a = std::clamp(accept_rate_, 0.01, 0.99);
  const double tokens = (1 - std::pow(a, g + 1)) / (1 - a);
  return tokens / std::max(1e-3, base_ms_ + row_ms_ * (g + 1) + draft_ms_ * g);
}

int GammaController::TrustedGamma() const {
  // The line is trusted up to twice the largest recent pass, not beyond: where noise makes rows
  // look free (a compute-bound swarm on busy cores), it would otherwise send as many drafts as
  // gamma allows. Gamma still doubles pass by pass where longer passes keep paying.
  return std::clamp(static_cast<int>(2 * max_rows_) - 1, 1, max_gamma_);
}

int GammaController::Choose() const {
  if (!adaptive_ || base_ms_ < 0) return gamma_;
  const int limit = TrustedGamma();
  int best = 0;
  double best_rate = Rate(0);
  for (int g = 1; g <= limit; ++g) {
    if (Rate(g) > best_rate * 1.0001) {
      best_rate = Rate(g);
      best = g;
    }
  }
  return best;
}

double GammaController::MinSurvival(bool drafting_free) const {
  if (!adaptive_ || base_ms_ < 0) return 0;
  // A draft costs its drafting and its row and brings `survival` tokens: worth it while that is
  // at least the rate the controller expects anyway.
  return (row_ms_ + (drafting_free ? 0 : draft_ms_)) * Rate(gamma_);
}

void GammaController::ObserveVerdict(float confidence, bool accepted) {
  const int b = std::clamp(static_cast<int>(confidence * kBuckets), 0, kBuckets - 1);
  constexpr double decay = 0.98;
  verdicts_[b] = decay * verdicts_[b] + 1;
  accepts_[b] = decay * accepts_[b] + (accepted ? 1 : 0);
}

double GammaController::Acceptance(float confidence) const {
  const int b = std::clamp(static_cast<int>(confidence * kBuckets), 0, kBuckets - 1);
  // Two pseudo-verdicts at the overall rate, so a bucket seen rarely leans on it.
  return (accepts_[b] + 2 * accept_rate_) / (verdicts_[b] + 2);
}

int GammaController::NextGamma(bool alone) {
  if (gamma_ > 0 || !adaptive_) {
    probe_every_ = kProbeEvery;
    if (adaptive_ && alone &&
        ++since_plain_ >= (plain_samples_ == 0   ? 1
                           : plain_samples_ < 3 ? kProbeEvery / 4
                                                : kRemeasureEvery)) {
      since_plain_ = 0;
      return 0;  // a plain step, to measure what speculation is weighed against
    }
    return gamma_;
  }
  if (hopeless_) return 0;
  if (++idle_passes_ < probe_every_) return 0;
  idle_passes_ = 0;
  probe_every_ = std::min(2 * probe_every_, 8 * kProbeEvery);  // until one finds gamma > 0
  return 1;
}

void GammaController::Rechoose() {
  // A draft saves at most one plain step: when drafting it and verifying its row cost as much,
  // no acceptance rate could make speculation pay, and a probe would only cost (a probe of a
  // costly drafter that has not read the text yet reads all of it first). When the links slow
  // down so that it could pay again, probing starts over at once. Leaving that state takes a
  // margin, and both weigh the quietest recent plain step: its measure moves with the machine's
  // load.
  if (adaptive_ && base_ms_ >= 0) {
    const double plain = quiet_plain_ms_ >= 0 ? quiet_plain_ms_ : base_ms_ + row_ms_;
    const bool hopeless =
        draft_ms_ + row_ms_ >= (hopeless_ ? kHopeLeave : kHopeEnter) * plain;
    if (hopeless_ && !hopeless) {
      probe_every_ = kProbeEvery;
      idle_passes_ = kProbeEvery;
    }
    hopeless_ = hopeless;
  }
  gamma_ = hopeless_ ? 0 : Choose();
}

double GammaController::Saving(int tokens, bool at_most) const {
  if (!adaptive_ || base_ms_ < 0) return std::numeric_limits<double>::infinity();
  tokens = std::max(0, tokens);
  if (at_most) {
    const double plain = quiet_plain_ms_ >= 0 ? quiet_plain_ms_ : 1 / Rate(0);
    return tokens * std::max(0.0, plain - row_ms_ - draft_ms_);
  }
  if (gamma_ == 0) return 0;
  return tokens * std::max(0.0, 1 / Rate(0) - 1 / Rate(gamma_));
}

bool GammaController::ProbeDue() const {
  return adaptive_ && gamma_ == 0 && !hopeless_ && idle_passes_ + 1 >= probe_every_;
}

void GammaController::ObserveDraft(int tokens, double ms) {
  if (tokens <= 0 || ms < 0) return;
  constexpr double w = 0.25;
  const double sample = ms / tokens;
  draft_ms_ = draft_ms_ == 0 ? sample : (1 - w) * draft_ms_ + w * sample;
  Rechoose();
}

void GammaController::ObservePrefill(int rows, double ms) {
  if (rows > 0 && ms >= 0) prefill_row_ms_ = ms / rows;
}

void GammaController::ExpectDraftCost(double ms) {
  if (draft_ms_ == 0 && ms > 0) draft_ms_ = ms;
}

double GammaController::PipelinedSpacing(int g, bool drafter_shares_cores) const {
  const double drafting = g * draft_ms_, rows = row_ms_ * (g + 1);
  return std::max(drafter_shares_cores ? drafting + rows : std::max(drafting, rows), 1e-3);
}

int GammaController::PipelinedRuns(int g, int max_runs, bool drafter_shares_cores) const {
  // Only whole runs' worth of the fixed cost is overlapped: part of it may be compute (the line
  // cannot tell a pass's fixed compute from the network), which runs in flight would share.
  const double more = std::floor(base_ms_ / PipelinedSpacing(g, drafter_shares_cores));
  return static_cast<int>(std::clamp(1 + more, 1.0, static_cast<double>(max_runs)));
}

double GammaController::PipelinedRate(int g, int runs, bool drafter_shares_cores) const {
  const double a = std::clamp(accept_rate_, 0.01, 0.99);
  const double pass = base_ms_ + row_ms_ * (g + 1);
  const double spacing = std::max(PipelinedSpacing(g, drafter_shares_cores), pass / runs);
  // The run that holds the next rejection is the k-th, k geometric with success 1 - a^g.
  const double cycle = g * draft_ms_ + pass + spacing * (1 / (1 - std::pow(a, g)) - 1);
  return 1 / (1 - a) / std::max(1e-3, cycle);
}

GammaController::Pipeline GammaController::PlanPipeline(int max_runs,
                                                        bool drafter_shares_cores) const {
  max_runs = std::max(1, max_runs);
  if (!adaptive_) return {gamma_, max_runs};
  // Without drafts worth sending (gamma 0), or until the passes' sizes have varied (the split
  // of a pass into its fixed cost and its rows is unknown), one run at a time.
  if (gamma_ == 0 || base_ms_ < 0 || !slope_known_ || max_runs == 1) return {gamma_, 1};
  Pipeline best{gamma_, 1};
  double best_rate = 0;
  for (int g = 1; g <= TrustedGamma(); ++g) {
    const int runs = PipelinedRuns(g, max_runs, drafter_shares_cores);
    const double rate = PipelinedRate(g, runs, drafter_shares_cores);
    if (rate > best_rate * 1.0001) {
      best_rate = rate;
      best = {g, runs};
    }
  }
  return best;
}

void GammaController::Observe(int rows, double ms, int drafted, int accepted) {
  // A prompt pass (many rows, no drafts) runs at prefill speed, not at the speed of the decode
  // passes gamma is chosen for: it would bend the line.
  if (drafted == 0 && rows > 1) return;
  constexpr double w = 0.25;
  if (drafted > 0) {
    const double rejected = accepted < drafted ? 1 : 0;
    const double sample = accepted / std::max(1.0, accepted + rejected);
    accept_rate_ = (1 - w) * accept_rate_ + w * sample;
  }
  if (ms < 0) {  // no cost sample
    Rechoose();
    return;
  }
  if (drafted == 0) {
    // A plain step is kept on its own as well: the line below is only used for passes with
    // drafts. Interference (other work on shared cores) only ever adds time: a slow sample moves
    // the estimate less than a fast one, so one unlucky step does not make speculation look good.
    const double wp = plain_ms_ < 0 ? 1 : ms < plain_ms_ ? 0.5 : 0.1;
    plain_ms_ = (1 - wp) * plain_ms_ + wp * ms;
    // The quietest recent step: it follows a faster sample at once, a slower one by a tenth.
    quiet_plain_ms_ = quiet_plain_ms_ < 0 || ms < quiet_plain_ms_
                          ? ms
                          : 0.9 * quiet_plain_ms_ + 0.1 * ms;
    ++plain_samples_;
  }
  constexpr double decay = 0.9;
  max_rows_ = std::max(static_cast<double>(rows), decay * max_rows_);
  fit_w_ = decay * fit_w_ + 1;
  fit_x_ = decay * fit_x_ + rows;
  fit_y_ = decay * fit_y_ + ms;
  fit_xx_ = decay * fit_xx_ + static_cast<double>(rows) * rows;
  fit_xy_ = decay * fit_xy_ + rows * ms;
  const double mx = fit_x_ / fit_w_, my = fit_y_ / fit_w_;
  const double var = fit_xx_ / fit_w_ - mx * mx;
  // With one pass size only, the split is unknown: keep the last slope (none yet: all base,
  // which lets gamma grow and so brings a second size).
  if (var > 1e-6) {
    row_ms_ = std::max(0.0, (fit_xy_ / fit_w_ - mx * my) / var);
    slope_known_ = true;
  }
  base_ms_ = std::max(0.0, my - row_ms_ * mx);
  Rechoose();
}

void SpeculativeDecoder::Learn(int rows, double ms, int drafted, int accepted) {
  gamma_control_.Observe(rows, ms, drafted, accepted);
}

absl::StatusOr<Generation> SpeculativeDecoder::GenerateRuns(
    std::span<const int32_t> prompt, const GenerateOptions& options,
    const strata::TokenCallback& on_token) {
  Generation result;
  result.prompt_tokens = static_cast<int>(prompt.size());
  Emitter emitter(*tokenizer_, options, on_token, &result);
  const int width = embedder_->n_embd();
  const size_t n_chains = chains_.size();
  const bool pipelined = options_.mode == SpeculativeOptions::Mode::kPipelined;

  // tokens[0, certain) are settled (the prompt and the generated text); the rest are drafts.
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  std::vector<float> probs(tokens.size(), 1.0f);
  int32_t certain = static_cast<int32_t>(tokens.size());
  std::vector<int32_t> fed(n_chains, 0);        // positions held by each chain
  std::vector<int32_t> confirmed(n_chains, 0);  // of which answered (not in flight)
  std::deque<Run> runs;                         // in flight, in submission order
  // Runs a rejection cancelled: never waited for (their rows were wasted when they were
  // cancelled), only collected once answered, so they hold up neither the answers behind them
  // nor the runs that replace them.
  std::vector<Run> stale;
  const absl::Time start = absl::Now();

  auto in_flight = [&](size_t c) {
    return std::count_if(runs.begin(), runs.end(),
                         [&](const Run& r) { return r.chain == static_cast<int>(c) && !r.cancelled; });
  };
  // Forgets everything from position `pos` on: runs holding it are cancelled and chains drop it.
  // A cancelled run may have been skipped by some hops and computed by others, so its chain
  // drops everything from the run's first position (re-sent later as catch-up rows), keeping
  // every hop of the chain alike.
  auto invalidate = [&](int32_t pos) {
    std::vector<int32_t> cut(n_chains, pos);
    for (Run& r : runs) {
      if (!r.cancelled && r.first + r.count > pos) {
        r.cancelled = true;
        const uint64_t id[1] = {r.id};
        chains_[r.chain]->CancelRuns(id);
        stats_.cancelled_runs++;
      }
      if (r.cancelled) cut[r.chain] = std::min(cut[r.chain], r.first);
    }
    for (size_t c = 0; c < n_chains; ++c) {
      if (fed[c] > cut[c]) {
        chains_[c]->TruncateAsync(0, cut[c]);
        fed[c] = cut[c];
        confirmed[c] = std::min(confirmed[c], cut[c]);
      }
    }
    // The truncates above follow every cancelled run on its chain: whatever a cancelled run
    // still computes is dropped there, so nothing waits for it.
    for (auto it = runs.begin(); it != runs.end();) {
      if (!it->cancelled) {
        ++it;
        continue;
      }
      stats_.wasted_rows += it->count;
      stale.push_back(*it);
      it = runs.erase(it);
    }
  };
  // Collects the stale runs that were answered (without waiting for any).
  std::vector<float> scratch;
  std::vector<int32_t> scratch_tokens;
  auto reap = [&] {
    std::erase_if(stale, [&](const Run& r) {
      if (!chains_[r.chain]->RunReady(r.id)) return false;
      if (options_.verify_at_last_hop) {
        (void)chains_[r.chain]->WaitVerdict(r.id, &scratch_tokens);
      } else {
        scratch.resize(static_cast<size_t>(r.first + r.count - r.out_first) * width);
        (void)chains_[r.chain]->WaitRun(r.id, scratch.data());
      }
      return true;
    });
  };

  // The chance that every draft beyond the settled text is accepted, by the drafter's confidence
  // in each.
  auto survival = [&]() {
    double s = 1;
    for (size_t i = certain; i < tokens.size(); ++i) s *= gamma_control_.Acceptance(probs[i]);
    return s;
  };

  // A drafter that has more than this of the text left to read (Drafter::Unread) catches up
  // first.
  constexpr int kCatchUp = 8;
  // One more draft beyond the text; false when the drafter has no guess.
  auto draft_one = [&] {
    std::vector<DraftToken> d = drafter_->Draft(tokens, 1);
    if (d.empty()) return false;
    tokens.push_back(d[0].token);
    probs.push_back(d[0].prob);
    return true;
  };

  // A costly drafter that a fresh cost model has not yet weighed against a plain step waits for
  // one before it reads the text: where a plain step is cheaper than a draft (a fast swarm on
  // the client's own cores), reading the prompt beside the prompt pass would only slow both.
  // (A drafter is costly for its drafts, or for what it has to read first.)
  gamma_control_.ExpectDraftCost(drafter_->token_ms());
  auto wait_for_plain_step = [&] {
    return options_.adaptive && gamma_control_.plain_ms() < 0 &&
           (drafter_->token_ms() >= 1.0 || drafter_->read_ms() * drafter_->Unread(tokens) >= 1.0);
  };
  // Before a model drafter reads what it has not seen of the text (the prompt of a request, or
  // what an idle drafter missed before a probe), that reading must be able to pay for itself over
  // the tokens this request may still generate: at the chosen gamma for a first read, or with
  // every draft accepted for a probe. Where it cannot (a short request on a fast swarm), the
  // request goes on without drafts.
  bool drafting_off = false;
  auto read_pays = [&](bool probe) {
    if (!options_.adaptive) return true;
    const double cost = drafter_->read_ms() * drafter_->Unread(tokens);
    if (cost <= 0) return true;
    return gamma_control_.Saving(options.max_tokens - stats_.emitted, probe) > cost;
  };
  std::vector<float> hidden, out;
  std::vector<int32_t> verdict;
  bool drafted_before = false;
  while (true) {
    reap();
    // Keep up to max_runs runs going, drafting ahead of the last one.
    const GammaController::Pipeline plan =
        pipelined ? gamma_control_.PlanPipeline(options_.max_in_flight,
                                                options_.drafter_shares_cores)
                  : GammaController::Pipeline{gamma_control_.gamma(), 1};
    const int max_runs = plan.runs;
    while (!emitter.done() && static_cast<int>(runs.size()) < max_runs) {
      // The least busy chain among as many as there are runs to keep going (with one run at a
      // time only the first: a second chain would first have to catch up on the whole text),
      // and of those the one with the least to catch up on.
      // A chain that is behind takes it only when computing its catch-up rows costs less than
      // the network time a concurrent run saves (on a compute-bound swarm it would only add rows).
      const size_t usable = std::min(n_chains, static_cast<size_t>(max_runs));
      const int32_t most_fed = *std::max_element(fed.begin(), fed.begin() + usable);
      auto eligible = [&](size_t i) {
        return fed[i] == most_fed ||
               gamma_control_.catch_up_row_ms() * (most_fed - fed[i]) < gamma_control_.base_ms();
      };
      size_t c = 0;
      while (!eligible(c)) ++c;
      for (size_t i = c + 1; i < usable; ++i) {
        if (!eligible(i)) continue;
        if (in_flight(i) < in_flight(c) || (in_flight(i) == in_flight(c) && fed[i] > fed[c])) {
          c = i;
        }
      }
      // New drafts go beyond everything already drafted, so that runs on different chains
      // verify different positions; a chain that is behind catches up inside its run.
      int gamma = drafting_off ? 0 : gamma_control_.NextGamma(/*alone=*/runs.empty());
      // Pipelined runs carry the plan's drafts (a plain step or a probe stays as it is).
      if (gamma > 0 && gamma == gamma_control_.gamma()) gamma = plan.gamma;
      if (gamma > 0 && drafted_before && drafter_->Unread(tokens) > kCatchUp &&
          !read_pays(/*probe=*/gamma_control_.gamma() == 0)) {
        drafting_off = true;  // the drafter would first read more than drafting can save
        gamma = 0;
      }
      const int depth_limit = max_runs * (gamma + 1);
      // A run carries gamma + 1 positions beyond everything sent (drafts prepared while earlier
      // runs were in flight are used first). The first run is the prompt alone: a model drafter
      // reads the prompt while it is in flight (below) rather than before it.
      const int32_t sent = *std::max_element(fed.begin(), fed.end());
      const int32_t want =
          drafted_before ? std::min<int32_t>(std::max(sent, certain - 1) + gamma + 1,
                                             certain + depth_limit)
                         : static_cast<int32_t>(tokens.size());
      if (static_cast<int32_t>(tokens.size()) < want) {
        // A drafter left idle for a while (gamma 0) first reads the text it missed: that is not
        // what a draft costs.
        if (drafter_->Unread(tokens) > kCatchUp) drafter_->Read(tokens);
        const absl::Time draft_start = absl::Now();
        const int32_t before = static_cast<int32_t>(tokens.size());
        // With runs in flight, an answer that arrives while a costly drafter works comes first:
        // it may reject what is being drafted, and the drafts would only go further ahead of
        // what is settled. (Free drafters finish first: that costs the answer nothing.)
        const bool interruptible =
            !runs.empty() && gamma_control_.draft_ms() * (want - before) >= 1.0;
        const double min_survival =
            gamma_control_.MinSurvival(!runs.empty() && !options_.drafter_shares_cores);
        auto answered = [&] {
          return interruptible && chains_[runs.front().chain]->RunReady(runs.front().id);
        };
        while (static_cast<int32_t>(tokens.size()) < want && survival() >= min_survival &&
               !answered() && draft_one()) {
        }
        gamma_control_.ObserveDraft(static_cast<int>(tokens.size()) - before,
                                    absl::ToDoubleMilliseconds(absl::Now() - draft_start));
        if (static_cast<int32_t>(tokens.size()) < want && answered()) {
          break;  // the front run's answer first; this run is drafted on after it
        }
      }
      const int32_t end = std::min<int32_t>(static_cast<int32_t>(tokens.size()),
                                            std::max(want, certain));
      if (end <= fed[c]) break;  // nothing new to send (the drafter has no guess)
      const int32_t first = fed[c];
      const int32_t count = end - first;
      // Logits are needed from the last settled token on (earlier rows only catch the chain up).
      const int32_t out_first = std::max(first, certain - 1);
      std::vector<model::Row> rows(count);
      for (int32_t i = 0; i < count; ++i) rows[i] = {first + i, model::SeqBit(0)};
      std::vector<int32_t> out_rows;
      for (int32_t p = out_first; p < end; ++p) out_rows.push_back(p - first);
      hidden.resize(static_cast<size_t>(count) * width);
      RETURN_IF_ERROR(embedder_->Embed(std::span<const int32_t>(tokens).subspan(first, count),
                                       hidden.data()));
      uint64_t id = 0;
      if (options_.verify_at_last_hop) {
        ASSIGN_OR_RETURN(id, chains_[c]->SubmitVerifiedRun(rows, hidden.data(), out_rows,
                                                           VerifyAt(tokens, out_first, end)));
      } else {
        ASSIGN_OR_RETURN(id, chains_[c]->SubmitRun(rows, hidden.data(), out_rows));
      }
      Run run;
      run.chain = static_cast<int>(c);
      run.id = id;
      run.first = first;
      run.count = count;
      run.out_first = out_first;
      run.drafted = std::max(0, end - std::max(first, certain));
      run.alone = runs.empty() && stale.empty();
      run.sent = absl::Now();
      runs.push_back(run);
      fed[c] = end;
      stats_.drafted += run.drafted;
    }
    if (runs.empty()) break;
    if (emitter.done()) {
      // Speculation still in flight is not waited for: the request has its tokens, and the
      // chains are not used again.
      for (const Run& r : runs) stats_.wasted_rows += r.count;
      break;
    }

    Run run = runs.front();
    runs.pop_front();
    if (!drafted_before && !run.cancelled && !wait_for_plain_step()) {
      // While a pass is in flight (the prompt's, or after a first plain step the next one): the
      // drafter reads the text and drafts the next run's tokens (the first is checked against
      // this pass's own token).
      const int gamma = plan.gamma;
      std::vector<DraftToken> drafts;
      if (gamma > 0 && !read_pays(/*probe=*/false)) {
        drafting_off = true;
      } else if (gamma > 0) {
        drafts = drafter_->Draft(tokens, gamma);
        run.alone = false;  // it shared the machine with the drafter: no measure of a step
      }
      for (const DraftToken& d : drafts) {
        tokens.push_back(d.token);
        probs.push_back(d.prob);
      }
      drafted_before = true;
    } else if (drafted_before && !drafting_off && !run.cancelled && gamma_control_.ProbeDue() &&
               drafter_->Unread(tokens) > kCatchUp) {
      // The next run probes an idle drafter: it reads the text it missed while this run is in
      // flight, rather than in front of the probe.
      if (read_pays(/*probe=*/true)) {
        drafter_->Read(tokens);
        run.alone = false;
      } else {
        drafting_off = true;  // the probe is left to a request it could pay off in
      }
    }
    // (Not during a plain step: it is sent alone to measure what a step costs by itself.)
    if (pipelined && !run.cancelled && gamma_control_.gamma() > 0 && run.drafted > 0) {
      // Continuous speculation: while the oldest run is in flight, the drafter keeps going
      // beyond the last run, up to one more run's worth (off the critical path, so not counted
      // as drafting cost); the next run sends what it found.
      const int32_t limit = certain + (max_runs + 1) * (plan.gamma + 1);
      const double min_survival = gamma_control_.MinSurvival(!options_.drafter_shares_cores);
      while (!chains_[run.chain]->RunReady(run.id) &&
             static_cast<int32_t>(tokens.size()) < limit && survival() >= min_survival &&
             draft_one()) {
      }
    }
    const int32_t out_count = run.first + run.count - run.out_first;
    absl::Status st;
    if (options_.verify_at_last_hop) {
      st = chains_[run.chain]->WaitVerdict(run.id, &verdict);
    } else {
      out.resize(static_cast<size_t>(out_count) * width);
      st = chains_[run.chain]->WaitRun(run.id, out.data());
    }
    if (run.cancelled || st.code() == absl::StatusCode::kCancelled) {
      stats_.wasted_rows += run.count;
      continue;
    }
    if (st.code() == absl::StatusCode::kAborted) {
      // The chain failed over: it holds the answered runs only. Resend from there.
      stats_.wasted_rows += run.count;
      const size_t c = run.chain;
      for (Run& r : runs) {
        if (r.chain == run.chain) r.cancelled = true;
      }
      const int32_t keep = std::min(confirmed[c], certain);
      chains_[c]->TruncateAsync(0, keep);
      fed[c] = keep;
      continue;
    }
    RETURN_IF_ERROR(st);
    if (options_.verify_at_last_hop && verdict.empty()) {
      return absl::InternalError("a verified run came back without tokens");
    }
    confirmed[run.chain] = std::max(confirmed[run.chain], run.first + run.count);
    if (run.first == 0 && run.drafted == 0 && run.count > 1) {
      gamma_control_.ObservePrefill(run.count,
                                    absl::ToDoubleMilliseconds(absl::Now() - run.sent));
    }
    if (result.prefill_ms == 0) result.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    // Verified at the last hop: its tokens from the first out row on, up to its first rejection.
    const int32_t decided = options_.verify_at_last_hop
                                ? std::min<int32_t>(out_count, static_cast<int32_t>(verdict.size()))
                                : out_count;
    if (!options_.verify_at_last_hop) Logits(out, out_count);
    stats_.passes++;
    int accepted_here = 0;
    bool rejected = false;
    for (int32_t i = 0; i < decided && !emitter.done(); ++i) {
      const int32_t q = run.out_first + i;  // this row's logits decide position q + 1
      if (q != certain - 1) continue;       // decided already, or beyond a rejection
      const bool has_draft = q + 1 < static_cast<int32_t>(tokens.size());
      const int32_t draft = has_draft ? tokens[q + 1] : -1;
      bool accepted = false;
      int32_t t;
      if (options_.verify_at_last_hop) {
        // The last hop saw the drafts known when the run was sent, and otherwise drew the
        // target's own token: a draft made since is accepted when it equals that token.
        t = verdict[i];
        accepted = has_draft && t == draft;
      } else {
        t = Decide(std::span<const float>(logits_).subspan(
                       static_cast<size_t>(i) * head_->n_vocab(), head_->n_vocab()),
                   q + 1, std::span<const int32_t>(tokens).first(q + 1), draft, &accepted);
      }
      if (has_draft) gamma_control_.ObserveVerdict(probs[q + 1], accepted);
      if (result.ttft_ms == 0) {
        result.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
        emitter.MarkFirstToken();
      }
      if (accepted) {
        ++certain;
        stats_.accepted++;
        ++accepted_here;
      } else {
        if (has_draft) {
          rejected = true;
          invalidate(q + 1);
          tokens.resize(q + 1);
          probs.resize(q + 1);
        }
        tokens.push_back(t);
        probs.push_back(1.0f);
        certain = q + 2;
      }
      stats_.emitted++;
      emitter.Push(t);
      if (rejected) break;
    }
    // A run that shared the chain with others also waited for their compute: only its
    // acceptance is news, not its cost.
    Learn(run.count, run.alone ? absl::ToDoubleMilliseconds(absl::Now() - run.sent) : -1,
          run.drafted,
          accepted_here);
    if (emitter.done()) invalidate(certain);  // drop the speculation still in flight
  }
  emitter.Finish();
  return result;
}

absl::StatusOr<Generation> SpeculativeDecoder::GenerateTree(
    std::span<const int32_t> prompt, const GenerateOptions& options,
    const strata::TokenCallback& on_token) {
  Generation result;
  result.prompt_tokens = static_cast<int>(prompt.size());
  Emitter emitter(*tokenizer_, options, on_token, &result);
  Chain* chain = chains_[0];
  const int width = embedder_->n_embd();
  const int vocab = head_->n_vocab();
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  int32_t fed = 0;  // positions the chain holds (all settled)
  const absl::Time start = absl::Now();

  struct Node {
    int32_t token;
    int parent;  // -1: child of the last settled token
    int depth;   // 1 for the token right after the settled text
    std::vector<int> children;
    model::SeqMask leaves = 0;
  };
  std::vector<float> hidden, out;
  while (!emitter.done()) {
    const int32_t certain = static_cast<int32_t>(tokens.size());
    // Grow the tree best first by the drafter's cumulative probability.
    std::vector<Node> nodes;
    const int budget = options_.adaptive
                           ? std::min(options_.tree_budget, 2 * gamma_control_.NextGamma())
                           : options_.tree_budget;
    struct Candidate {
      double score;
      int parent;
      int32_t token;
      bool operator<(const Candidate& o) const { return score < o.score; }
    };
    std::priority_queue<Candidate> frontier;
    const absl::Time draft_start = absl::Now();
    if (budget > 0) {
      for (const DraftToken& d : drafter_->Next(tokens, options_.tree_branch)) {
        frontier.push({d.prob, -1, d.token});
      }
    }
    int leaves = 0;
    while (!frontier.empty() && static_cast<int>(nodes.size()) < budget) {
      Candidate c = frontier.top();
      frontier.pop();
      const bool parent_was_leaf = c.parent >= 0 && nodes[c.parent].children.empty();
      const int new_leaves = leaves + (parent_was_leaf ? 0 : 1);
      if (new_leaves > model::kMaxSeqs - 1) continue;
      leaves = new_leaves;
      nodes.push_back({c.token, c.parent, c.parent < 0 ? 1 : nodes[c.parent].depth + 1, {}, 0});
      const int id = static_cast<int>(nodes.size()) - 1;
      if (c.parent >= 0) nodes[c.parent].children.push_back(id);
      // Children scores carry this node's cumulative probability.
      std::vector<int32_t> path(tokens.begin(), tokens.end());
      std::vector<int32_t> rev;
      for (int n = id; n >= 0; n = nodes[n].parent) rev.push_back(nodes[n].token);
      path.insert(path.end(), rev.rbegin(), rev.rend());
      if (static_cast<int>(nodes.size()) < budget) {
        for (const DraftToken& d : drafter_->Next(path, options_.tree_branch)) {
          frontier.push({c.score * d.prob, id, d.token});
        }
      }
    }
    if (stats_.passes > 0) {  // the first tree reads the whole prompt into a model drafter
      gamma_control_.ObserveDraft(static_cast<int>(nodes.size()),
                                  absl::ToDoubleMilliseconds(absl::Now() - draft_start));
    }
    // Leaves get sequence ids 1..; every node is tagged with the leaves below it.
    int next_seq = 1;
    for (int i = static_cast<int>(nodes.size()) - 1; i >= 0; --i) {
      if (nodes[i].children.empty()) nodes[i].leaves |= model::SeqBit(next_seq++);
      if (nodes[i].parent >= 0) nodes[nodes[i].parent].leaves |= nodes[i].leaves;
    }
    // Rows: the settled tokens the chain does not hold yet, then the tree.
    const int32_t settled_rows = certain - fed;
    const int32_t count = settled_rows + static_cast<int32_t>(nodes.size());
    std::vector<model::Row> rows(count);
    std::vector<int32_t> row_tokens(count);
    for (int32_t i = 0; i < settled_rows; ++i) {
      rows[i] = {fed + i, model::SeqBit(0)};
      row_tokens[i] = tokens[fed + i];
    }
    for (size_t n = 0; n < nodes.size(); ++n) {
      rows[settled_rows + n] = {certain - 1 + nodes[n].depth, nodes[n].leaves, model::SeqBit(0)};
      row_tokens[settled_rows + n] = nodes[n].token;
    }
    std::vector<int32_t> out_rows;
    for (int32_t i = settled_rows - 1; i < count; ++i) out_rows.push_back(i);
    hidden.resize(static_cast<size_t>(count) * width);
    RETURN_IF_ERROR(embedder_->Embed(row_tokens, hidden.data()));
    const absl::Time sent = absl::Now();
    ASSIGN_OR_RETURN(uint64_t id, chain->SubmitRun(rows, hidden.data(), out_rows));
    out.resize(out_rows.size() * static_cast<size_t>(width));
    absl::Status st = chain->WaitRun(id, out.data());
    if (st.code() == absl::StatusCode::kAborted) {
      // The chain failed over and holds the settled text it had answered; send the rest again.
      stats_.wasted_rows += count;
      (void)chain->Commit(1, 0);  // nothing but sequence 0 survives
      continue;
    }
    RETURN_IF_ERROR(st);
    if (result.prefill_ms == 0) result.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    Logits(out, static_cast<int64_t>(out_rows.size()));
    stats_.passes++;
    stats_.drafted += static_cast<int>(nodes.size());
    // Walk down the tree while the target's token is among the children.
    int cur = -1;
    int accepted = 0;
    while (!emitter.done()) {
      const size_t row = cur < 0 ? 0 : static_cast<size_t>(cur) + 1;  // index into out rows
      const int64_t position = static_cast<int64_t>(tokens.size());
      const int32_t t = sampler_->Sample(
          std::span<const float>(logits_).subspan(row * vocab, vocab), position, tokens);
      if (result.ttft_ms == 0) {
        result.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
        emitter.MarkFirstToken();
      }
      tokens.push_back(t);
      stats_.emitted++;
      emitter.Push(t);
      const std::vector<int>& kids = cur < 0 ? std::vector<int>() : nodes[cur].children;
      int next = -1;
      if (cur < 0) {
        for (size_t n = 0; n < nodes.size(); ++n) {
          if (nodes[n].parent < 0 && nodes[n].token == t) next = static_cast<int>(n);
        }
      } else {
        for (int k : kids) {
          if (nodes[k].token == t) next = k;
        }
      }
      if (next < 0) break;  // `t` is the correction (or the bonus after a leaf)
      cur = next;
      ++accepted;
    }
    stats_.accepted += accepted;
    stats_.wasted_rows += static_cast<int>(nodes.size()) - accepted;
    // The accepted branch joins the committed text; the rest of the tree is dropped.
    model::SeqId leaf = 1;
    if (cur >= 0) leaf = __builtin_ctzll(nodes[cur].leaves);
    // Not waited for: the next pass queues behind it on every hop. Without a tree the pass held
    // the committed sequence alone: nothing to drop.
    if (!nodes.empty()) chain->CommitAsync(leaf, certain + accepted);
    fed = certain + accepted;
    Learn(count, absl::ToDoubleMilliseconds(absl::Now() - sent), static_cast<int>(nodes.size()),
          accepted);
  }
  emitter.Finish();
  return result;
}

}  // namespace strata::client
