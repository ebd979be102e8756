// How many drafts speculative decoding sends per pass, and how many runs it keeps in flight,
// chosen from what passes, drafts and verdicts are measured to cost and bring.
#pragma once

#include <algorithm>

namespace strata::client {

// Drafts per pass for the best expected tokens per millisecond: the acceptance rate a (each draft
// accepted with probability a until the first rejection), a pass's cost, ms = base + per_row *
// rows, fitted by least squares over the decode passes (recent ones weigh more), the drafter's
// own cost per drafted token, so gamma g costs base + per_row * (g + 1) + draft * g for
// (1 - a^(g+1)) / (1 - a) tokens, and the cost of a plain step (one row, no drafts) measured on
// its own: a pass's cost is not linear down to one row (a single row takes other kernels, and the
// client computes logits for every out row), so the line, good for the sizes speculation sends,
// misjudges plain decoding. The first run goes without drafts to measure it, then every fourth
// until three plain steps have been seen, then one run in every kRemeasureEvery. On a slow link
// nearly all of a pass is the base, which speculation pays once for many tokens; a drafter that is
// rarely right, or costs more than it saves, gets gamma 0 — plain decoding — with one-draft probes
// now and then so a drafter that starts to be right (text that repeats itself) is noticed.
//
// Within a pass, the drafter's confidence in each draft (its own probability for it) tells which
// drafts will likely be rejected: acceptance is learned per confidence bucket, and drafting stops
// where the chance that every draft so far is accepted no longer pays for another draft.
class GammaController {
 public:
  GammaController(int gamma, int max_gamma, bool adaptive);
  // A pass of `rows` rows took `ms` (negative: unknown); `accepted` of its `drafted` drafts were
  // accepted.
  void Observe(int rows, double ms, int drafted, int accepted);
  // The drafter took `ms` to propose `tokens` tokens.
  void ObserveDraft(int tokens, double ms);
  // The prompt's pass (`rows` rows) took `ms`, whatever else shared the machine meanwhile.
  void ObservePrefill(int rows, double ms);
  // What computing one row costs at least, for rows that only catch a chain up: the line through
  // the decode passes can say rows are free (noise on shared cores), the prompt's pass cannot.
  double catch_up_row_ms() const { return std::max(row_ms_, prefill_row_ms_); }
  // What a draft is known to cost before any was observed here (the drafter's own measure).
  void ExpectDraftCost(double ms);
  // A draft the drafter gave probability `confidence` was accepted or rejected.
  void ObserveVerdict(float confidence, bool accepted);
  // The chance that a draft of this confidence is accepted (given those before it were).
  double Acceptance(float confidence) const;
  // Another draft beyond drafts that are all accepted with probability `survival` pays for its
  // drafting and its row only when survival is at least this. A draft made while runs are in
  // flight on a drafter with cores of its own (`drafting_free`) costs only its row: the client
  // would otherwise wait idle for the answer.
  double MinSurvival(bool drafting_free = false) const;
  int gamma() const { return gamma_; }
  // Drafts for the next run: gamma(), or 0 for a run that measures a plain step (only when
  // `alone`: nothing else in flight), or while gamma is 0 a one-draft probe after kProbeEvery
  // runs, then 2x, 4x, 8x as many — none when a draft costs more than a plain step saves.
  int NextGamma(bool alone = true);
  // Whether the next NextGamma() is a probe (one draft while gamma is 0).
  bool ProbeDue() const;
  // What drafting could save over `tokens` more tokens, in ms, against plain steps: at the
  // chosen gamma, or, `at_most`, with every draft accepted (a draft then saves a plain step less
  // its own cost and its row). Infinite until a pass has been measured, or when not adaptive.
  double Saving(int tokens, bool at_most) const;
  static constexpr int kProbeEvery = 16;
  static constexpr int kRemeasureEvery = 64;
  // A drafter whose draft and row cost at least kHopeEnter plain steps is not probed (even
  // always right, it could not gain), until they cost less than kHopeLeave of one.
  static constexpr double kHopeEnter = 1.0;
  static constexpr double kHopeLeave = 0.8;
  // Pipelined speculation (M3): drafts per run and runs in flight, at most `max_runs`.
  //
  // A run can follow the one before every s ms, s the time its g drafts take or its g + 1 rows
  // take on the chain, whichever is longer (their sum when the drafter shares the chain's
  // cores). Runs in flight overlap a pass's fixed cost: one more for each s in it. After a
  // rejection the first run is
  // drafted afresh and waits a whole pass; the runs behind it follow s apart, and the one that
  // holds the next rejection (each run is wholly accepted with probability a^g) ends the cycle,
  // which brings 1 / (1 - a) tokens on average. So, unlike one run at a time, where a longer run
  // spreads the pass's fixed cost over more drafts, shorter runs often pay here: a rejection is
  // seen sooner, and the runs behind it were drafted while the first was in flight.
  struct Pipeline {
    int gamma = 0;
    int runs = 1;
  };
  Pipeline PlanPipeline(int max_runs, bool drafter_shares_cores = false) const;
  double base_ms() const { return base_ms_; }
  double row_ms() const { return row_ms_; }
  double plain_ms() const { return plain_ms_; }
  double accept_rate() const { return accept_rate_; }
  double draft_ms() const { return draft_ms_; }

 private:
  static constexpr int kBuckets = 10;
  int Choose() const;
  // Weighs whether drafting could pay at all, then chooses gamma.
  void Rechoose();
  // Expected tokens per ms with g drafts per pass.
  double Rate(int g) const;
  // The longest pass the fitted line is trusted for, in drafts.
  int TrustedGamma() const;
  // For pipelined runs of g drafts: how often one can be sent, how many keep the drafter and
  // the chain busy, and the expected tokens per ms.
  double PipelinedSpacing(int g, bool drafter_shares_cores) const;
  int PipelinedRuns(int g, int max_runs, bool drafter_shares_cores) const;
  double PipelinedRate(int g, int runs, bool drafter_shares_cores) const;

  int gamma_, max_gamma_;
  bool adaptive_;
  int idle_passes_ = 0;            // runs sent at gamma 0 since the last probe
  int probe_every_ = kProbeEvery;  // doubles after each probe that leaves gamma at 0
  bool hopeless_ = false;          // a draft cost about a plain step last time
  int since_plain_ = 0;            // speculative runs since the last measured plain step
  double draft_ms_ = 0;            // per drafted token, smoothed
  double accept_rate_ = 0.7;
  double plain_ms_ = -1;        // a plain step, smoothed; negative until measured
  double quiet_plain_ms_ = -1;  // the quietest recent plain step
  int plain_samples_ = 0;
  double base_ms_ = -1, row_ms_ = 0;
  bool slope_known_ = false;
  double max_rows_ = 0;        // the largest recent measured pass, decayed
  double prefill_row_ms_ = 0;  // the last prompt pass, per row (its fixed cost included)
  double fit_w_ = 0, fit_x_ = 0, fit_y_ = 0, fit_xx_ = 0, fit_xy_ = 0;  // decayed sums
  double verdicts_[kBuckets] = {}, accepts_[kBuckets] = {};  // decayed, per confidence bucket
};

}  // namespace strata::client
