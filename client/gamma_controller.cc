#include "client/gamma_controller.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace strata::client {

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
        ++since_plain_ >= (plain_samples_ == 0  ? 1
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
    const bool hopeless = draft_ms_ + row_ms_ >= (hopeless_ ? kHopeLeave : kHopeEnter) * plain;
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
    quiet_plain_ms_ =
        quiet_plain_ms_ < 0 || ms < quiet_plain_ms_ ? ms : 0.9 * quiet_plain_ms_ + 0.1 * ms;
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

}  // namespace strata::client
