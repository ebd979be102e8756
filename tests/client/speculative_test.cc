// Speculative decoding in one process: every drafter and mode gives exactly the plain tokens
// (greedy and seeded sampling), the committed KV equals the KV of the committed text, and
// rejection sampling preserves the target distribution (chi-square).
#include "client/speculative.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <set>

#include "client/drafter.h"
#include "client/generate.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "client/run_request.h"
#include "gguf/requantize.h"
#include "model/sampling.h"
#include "tests/testing/paths.h"
#include "tests/testing/tiny_model.h"

namespace strata::client {
namespace {

using Mode = SpeculativeOptions::Mode;

// Pearson chi-square statistic of two samples' histograms over their shared support.
double ChiSquare(const std::map<int64_t, int>& a, const std::map<int64_t, int>& b, int* bins) {
  double na = 0, nb = 0;
  for (auto& [k, v] : a) na += v;
  for (auto& [k, v] : b) nb += v;
  std::map<int64_t, std::pair<double, double>> all;
  for (auto& [k, v] : a) all[k].first = v;
  for (auto& [k, v] : b) all[k].second = v;
  double chi = 0;
  *bins = 0;
  for (auto& [k, v] : all) {
    const double total = v.first + v.second;
    if (total < 10) continue;  // rare outcomes: too few for the approximation
    const double ea = total * na / (na + nb), eb = total * nb / (na + nb);
    chi += (v.first - ea) * (v.first - ea) / ea + (v.second - eb) * (v.second - eb) / eb;
    ++*bins;
  }
  return chi;
}

// Upper 0.1% point of chi-square with `df` degrees of freedom (Wilson-Hilferty).
double ChiSquareCritical(int df) {
  const double z = 3.09;
  const double k = df;
  return k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
}

// Passes of a simulated link: `base` ms whatever the size plus `per_row` ms per row. The prompt
// pass comes first, as in a generation (at prefill speed, which the fit must ignore), then
// decode passes of the sizes the controller picks.
GammaController Simulate(double base, double per_row, double accept, int passes) {
  GammaController c(/*gamma=*/4, /*max_gamma=*/16, /*adaptive=*/true);
  c.Observe(40, base + per_row * 10, 0, 0);  // the prompt: 40 rows at a quarter of the cost
  for (int i = 0; i < passes; ++i) {
    const int g = c.NextGamma();
    // Expected accepted drafts of g at acceptance `accept`, rounded: deterministic.
    const int accepted = static_cast<int>(std::lround(accept * (1 - std::pow(accept, g)) /
                                                      (1 - accept)));
    c.Observe(g + 1, base + per_row * (g + 1), g, std::min(accepted, g));
  }
  return c;
}

TEST(GammaControllerTest, RecoversThePassCostFromTheDecodePasses) {
  const GammaController c = Simulate(/*base=*/200, /*per_row=*/1.5, /*accept=*/0.7, 20);
  EXPECT_NEAR(c.base_ms(), 200, 1);
  EXPECT_NEAR(c.row_ms(), 1.5, 0.05);
}

TEST(GammaControllerTest, NoiseThatMakesRowsLookFreeDoesNotSendLongRuns) {
  // A compute-bound swarm (5 ms a pass, 1.5 ms a row) and a free drafter right half the time: a
  // short gamma.
  GammaController c = Simulate(/*base=*/5, /*per_row=*/1.5, /*accept=*/0.5, 20);
  ASSERT_LE(c.gamma(), 2);
  // Then noise on shared cores makes one- and two-row passes cost the same, so the line through
  // the recent passes says rows are free. Passes far longer than any seen lately are not sent
  // on that word alone.
  for (int i = 0; i < 40; ++i) {
    c.Observe(1, 8.0, 0, 0);
    c.Observe(2, 8.0, 1, i % 2);
  }
  EXPECT_LT(c.row_ms(), 0.1);
  EXPECT_LE(c.gamma(), 3);
}

TEST(GammaControllerTest, CatchingAChainUpCostsAtLeastWhatThePromptsRowsCost) {
  // The same compute-bound swarm, whose prompt of 40 rows took 60 ms.
  GammaController c = Simulate(/*base=*/5, /*per_row=*/1.5, /*accept=*/0.5, 20);
  c.ObservePrefill(40, 60.0);
  for (int i = 0; i < 40; ++i) {
    c.Observe(1, 8.0, 0, 0);
    c.Observe(2, 8.0, 1, i % 2);
  }
  ASSERT_LT(c.row_ms(), 0.1);  // the decode passes' line says rows are free
  // A replica chain 40 rows behind would cost a whole prompt pass to catch up, not nothing:
  // far more than the few ms a concurrent run could save.
  EXPECT_DOUBLE_EQ(c.catch_up_row_ms(), 1.5);
  EXPECT_GT(c.catch_up_row_ms() * 40, c.base_ms());
  // Where the line knows rows cost more, it is used.
  GammaController slow = Simulate(/*base=*/200, /*per_row=*/3, /*accept=*/0.7, 20);
  slow.ObservePrefill(40, 60.0);
  EXPECT_NEAR(slow.catch_up_row_ms(), 3, 0.1);
}

TEST(GammaControllerTest, SlowLinksGetLongDraftsAndExpensiveRowsNone) {
  // 200 ms a pass, 1.5 ms a row, 70% acceptance: a pass of g drafts yields (1 - 0.7^(g+1)) / 0.3
  // tokens; tokens per ms peaks well above g = 4.
  EXPECT_GE(Simulate(200, 1.5, 0.7, 20).gamma(), 6);
  // Rows cost as much as the pass and drafts are mostly wrong: plain decoding is best.
  EXPECT_EQ(Simulate(1, 10, 0.2, 20).gamma(), 0);
}

TEST(GammaControllerTest, RunsInFlightOverlapTheNetworkNotTheCompute) {
  // 200 ms of a pass is waiting: the most runs allowed overlap it.
  EXPECT_EQ(Simulate(200, 1.5, 0.7, 20).PlanPipeline(3).runs, 3);
  // A pass is mostly compute on shared cores: runs in flight would only queue behind each other.
  EXPECT_EQ(Simulate(5, 2.5, 0.9, 20).PlanPipeline(3).runs, 1);
  // No drafts worth sending: plain decoding, one step at a time.
  EXPECT_EQ(Simulate(1, 10, 0.2, 20).PlanPipeline(3).runs, 1);
  // A fixed gamma keeps as many runs going as allowed.
  EXPECT_EQ(GammaController(4, 16, /*adaptive=*/false).PlanPipeline(3).runs, 3);
}

// Tokens per ms of pipelined speculation, by an event-by-event simulation rather than the
// controller's closed form. The drafter makes a draft every `draft` ms, one run's worth ahead of
// what was sent; a run of `g` drafts goes out once they are made and fewer than `runs` are in
// flight. The chain computes one run at a time (`row` ms a row, g + 1 rows) and answers `base` ms
// after it computed it. Each draft is right with probability `a`: the first wrong one settles the
// drafts before it and the target's own token, cancels every run after it, and the drafter
// starts again from there.
double SimulatePipeline(double base, double row, double draft, double a, int g, int runs) {
  std::mt19937 rng(7);
  std::bernoulli_distribution right(a);
  struct InFlight {
    double answer;
    int wrong_at;  // index of the first wrong draft, or g
  };
  std::deque<InFlight> flight;
  double now = 0, drafts_ready = draft * g, chain_free = 0;
  int64_t settled = 0;
  while (settled < 20000) {
    while (static_cast<int>(flight.size()) < runs) {
      const double send = std::max(drafts_ready, now);
      chain_free = std::max(send, chain_free) + row * (g + 1);
      int wrong = 0;
      while (wrong < g && right(rng)) ++wrong;
      flight.push_back({chain_free + base, wrong});
      drafts_ready = send + draft * g;  // the next run's drafts start once this one is sent
    }
    const InFlight front = flight.front();
    flight.pop_front();
    now = std::max(now, front.answer);
    if (front.wrong_at == g) {
      settled += g;
      continue;
    }
    settled += front.wrong_at + 1;
    flight.clear();  // the runs behind it drafted beyond the rejection
    drafts_ready = now + draft * g;
    chain_free = std::min(chain_free, now);  // cancelled runs stop
  }
  return settled / now;
}

TEST(GammaControllerTest, PipelinedRunsAreShortAndManyWhereTheLinkDominates) {
  // Swarms whose passes are mostly waiting, the first as the benchmark's on two cores at 20 ms a
  // hop: 87 ms a pass, 6.5 ms a row, drafts of 9.5 ms right 85% of the time. The plan, simulated,
  // is about as good as the best plan there is.
  struct Case {
    double base, row, accept, draft;
  };
  for (const Case& k : {Case{87, 6.5, 0.85, 9.5}, Case{200, 1.5, 0.7, 3}, Case{100, 1, 0.95, 4},
                        Case{30, 4, 0.8, 2}}) {
    SCOPED_TRACE(::testing::Message() << "base " << k.base << " row " << k.row);
    GammaController c = Simulate(k.base, k.row, k.accept, 40);
    for (int i = 0; i < 20; ++i) c.ObserveDraft(1, k.draft);
    ASSERT_GT(c.gamma(), 0);
    const GammaController::Pipeline plan = c.PlanPipeline(8);
    ASSERT_GE(plan.gamma, 1);
    // What the controller believes, simulated for every plan it could have made.
    auto rate = [&](int g, int runs) {
      return SimulatePipeline(c.base_ms(), c.row_ms(), c.draft_ms(), c.accept_rate(), g, runs);
    };
    double best = 0;
    for (int g = 1; g <= 16; ++g) {
      for (int runs = 1; runs <= 8; ++runs) best = std::max(best, rate(g, runs));
    }
    EXPECT_GE(rate(plan.gamma, plan.runs), 0.9 * best) << plan.gamma << " x " << plan.runs;
    // And at least what one run at a time with the chain mode's gamma gives there.
    EXPECT_GE(rate(plan.gamma, plan.runs), rate(c.gamma(), 1));
  }
  // One run at a time wants long runs to spread the pass's fixed cost; pipelined runs want
  // shorter ones, several in flight.
  GammaController slow = Simulate(87, 6.5, 0.85, 40);
  for (int i = 0; i < 20; ++i) slow.ObserveDraft(1, 9.5);
  const GammaController::Pipeline plan = slow.PlanPipeline(8);
  EXPECT_LT(plan.gamma, slow.gamma());
  EXPECT_GE(plan.runs, 3);
}

TEST(GammaControllerTest, DraftingCostCountsAgainstGamma) {
  // A slow link where drafts pay (as above), unless each draft costs as much as a pass's base:
  // then a 70%-right drafter loses to plain decoding.
  GammaController c = Simulate(200, 1.5, 0.7, 20);
  ASSERT_GE(c.gamma(), 6);
  c.ObserveDraft(4, 4 * 400.0);
  EXPECT_EQ(c.gamma(), 0);
  // Cheap drafts again (the smoothing takes a few samples to forget).
  for (int i = 0; i < 20; ++i) c.ObserveDraft(4, 0.4);
  EXPECT_GE(c.gamma(), 6);
}

TEST(GammaControllerTest, GammaZeroProbesTheDrafterNowAndThen) {
  // Cheap rows (5 ms a pass, 2 ms a row) but a drafter that is almost never right.
  GammaController c = Simulate(5, 2, 0.05, 20);
  ASSERT_EQ(c.gamma(), 0);
  // One-draft probes, each twice as far from the last as the one before, up to 8 x kProbeEvery.
  std::vector<int> at;
  for (int i = 0; i < 40 * GammaController::kProbeEvery; ++i) {
    const bool due = c.ProbeDue();  // told a run ahead, so an idle drafter can catch up
    const int g = c.NextGamma();
    ASSERT_LE(g, 1);
    ASSERT_EQ(due, g == 1) << i;
    if (g == 1) at.push_back(i);
  }
  ASSERT_GE(at.size(), 4u);
  for (size_t k = 2; k < at.size(); ++k) {
    EXPECT_GE(at[k] - at[k - 1], at[k - 1] - at[k - 2]);
  }
  EXPECT_EQ(at.back() - at[at.size() - 2], 8 * GammaController::kProbeEvery);
  // A probe that finds the drafter right on a link that became slow brings speculation back.
  for (int i = 0; i < 30; ++i) {
    c.Observe(1, 201, 0, 0);  // the plain steps in between
    c.Observe(i % 2 ? 2 : 3, i % 2 ? 202 : 203.5, 1, 1);
  }
  EXPECT_GE(c.gamma(), 1);
}

TEST(DrafterCacheTest, LeasesAreExclusiveAndReused) {
  DrafterCache cache("", 1000, 1);
  EXPECT_EQ(cache.Take("nonsense").status().code(), absl::StatusCode::kInvalidArgument);
  Drafter* first = nullptr;
  Drafter* second = nullptr;
  {
    auto a = cache.Take("ngram");
    auto b = cache.Take("ngram");
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(a->get(), b->get());  // both in use: two instances
    first = a->get();
    second = b->get();
    EXPECT_EQ(cache.idle("ngram"), 0u);
  }
  EXPECT_EQ(cache.idle("ngram"), 2u);
  auto again = cache.Take("ngram");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->get() == first || again->get() == second);  // reused, not made anew
  EXPECT_EQ(cache.idle("ngram"), 1u);
  EXPECT_EQ(cache.idle("self:3"), 0u);
}

TEST(DrafterCacheTest, WhatWasLearnedStaysWithTheDrafterPerMode) {
  DrafterCache cache("", 1000, 1);
  Drafter* kept = nullptr;
  {
    auto lease = cache.Take("ngram");
    ASSERT_TRUE(lease.ok());
    lease->learned("chain") = std::make_shared<int>(7);
    EXPECT_EQ(lease->learned("tree"), nullptr);
    kept = lease->get();
  }
  auto back = cache.Take("ngram");
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back->get(), kept);
  ASSERT_NE(back->learned("chain"), nullptr);
  EXPECT_EQ(*static_cast<int*>(back->learned("chain").get()), 7);
  EXPECT_EQ(back->learned("pipelined"), nullptr);
}

TEST(GammaControllerTest, NoProbesWhenADraftCostsMoreThanAPassSaves) {
  // Compute-bound passes (1 ms fixed, 10 ms a row) and a drafter at 5 ms a draft: even a drafter
  // that is always right cannot win, so there is nothing to probe for.
  GammaController c = Simulate(1, 10, 0.2, 20);
  c.ObserveDraft(1, 5.0);
  ASSERT_EQ(c.gamma(), 0);
  for (int i = 0; i < 20 * GammaController::kProbeEvery; ++i) ASSERT_EQ(c.NextGamma(), 0);
  // The links slow down (200 ms a pass): drafts pay again (or at least are probed at once).
  for (int i = 0; i < 30; ++i) c.Observe(1, 201, 0, 0);
  EXPECT_GE(c.NextGamma(), 1);
}

TEST(GammaControllerTest, APlainStepIsMeasuredNotExtrapolated) {
  // Speculative passes cost 20 ms + 1.5 ms a row; a drafter right 90% of the time at 5 ms a
  // draft. On that line, a plain step would cost 21.5 ms and drafting pays. But a plain step (one
  // row, other kernels) really takes 6 ms: every draft then costs more than it saves, and only the
  // measured plain step shows it.
  auto trained = [](double plain_ms) {
    GammaController c(/*gamma=*/4, /*max_gamma=*/16, /*adaptive=*/true);
    c.ObserveDraft(4, 20.0);
    for (int i = 0; i < 40; ++i) {
      const int g = 2 + i % 7;
      c.Observe(g + 1, 20 + 1.5 * (g + 1), g, i % 3 == 0 ? g - 1 : g);
    }
    c.Observe(1, plain_ms, 0, 0);
    return c;
  };
  const GammaController cheap = trained(6.0);
  EXPECT_NEAR(cheap.plain_ms(), 6.0, 1e-9);
  EXPECT_EQ(cheap.gamma(), 0);
  // The same line with a plain step as dear as it says: speculation pays.
  EXPECT_GE(trained(21.5).gamma(), 2);
}

TEST(GammaControllerTest, PlainStepsAreMeasuredWhileSpeculating) {
  GammaController c(4, 16, true);
  std::vector<int> plain_at;
  for (int i = 0; i < 200; ++i) {
    const int g = c.NextGamma();
    if (g == 0) plain_at.push_back(i);
    c.Observe(g + 1, 200 + 1.5 * (g + 1), g, g);  // a slow link, every draft right
  }
  ASSERT_GE(c.gamma(), 1);
  // First the very first run, then every fourth until three, then one in kRemeasureEvery.
  ASSERT_GE(plain_at.size(), 4u);
  EXPECT_EQ(plain_at[0], 0);
  EXPECT_EQ(plain_at[1] - plain_at[0], GammaController::kProbeEvery / 4);
  EXPECT_EQ(plain_at[3] - plain_at[2], GammaController::kRemeasureEvery);
  // A run that shares the chain with others is no measure of a plain step: none then.
  GammaController busy(4, 16, true);
  for (int i = 0; i < 200; ++i) EXPECT_GE(busy.NextGamma(/*alone=*/false), 1);
}

TEST(GammaControllerTest, ASlowPlainSampleMovesTheEstimateLessThanAFastOne) {
  GammaController c(4, 16, true);
  c.Observe(1, 10, 0, 0);
  c.Observe(1, 30, 0, 0);  // interference on a shared machine
  const double after_slow = c.plain_ms();
  EXPECT_LT(after_slow, 15);
  c.Observe(1, 2, 0, 0);
  EXPECT_LT(after_slow - c.plain_ms(), after_slow - 2);
  EXPECT_GT(after_slow - c.plain_ms(), (after_slow - 2) / 3);
}

TEST(GammaControllerTest, AcceptanceIsLearnedPerConfidence) {
  GammaController c(4, 16, true);
  // Sure drafts are right, unsure ones mostly wrong.
  for (int i = 0; i < 200; ++i) {
    c.ObserveVerdict(0.97f, true);
    c.ObserveVerdict(0.15f, i % 5 == 0);
  }
  EXPECT_GT(c.Acceptance(0.97f), 0.95);
  EXPECT_NEAR(c.Acceptance(0.15f), 0.2, 0.05);
  // A confidence never seen leans on the overall rate.
  EXPECT_NEAR(c.Acceptance(0.55f), c.accept_rate(), 1e-9);
}

TEST(GammaControllerTest, MinSurvivalFollowsWhatADraftCosts) {
  // On a slow link a draft is nearly free against a pass: even an unlikely one is worth sending.
  const GammaController slow = Simulate(200, 1.5, 0.7, 20);
  EXPECT_LT(slow.MinSurvival(), 0.1);
  // Compute-bound passes with a drafter at 5 ms a draft: no draft is likely enough to pay.
  GammaController busy = Simulate(1, 10, 0.2, 20);
  busy.ObserveDraft(1, 5.0);
  EXPECT_GT(busy.MinSurvival(), 1.0);
  // Fixed gamma: drafting is never cut short.
  EXPECT_EQ(GammaController(3, 16, /*adaptive=*/false).MinSurvival(), 0);
}

TEST(GammaControllerTest, SavingWeighsDraftsAgainstPlainSteps) {
  // Nothing measured yet, or gamma fixed: no bound.
  EXPECT_TRUE(std::isinf(GammaController(4, 16, true).Saving(10, false)));
  EXPECT_TRUE(std::isinf(GammaController(4, 16, false).Saving(10, true)));
  // Plain steps of 100 ms (a slow link), rows of 2 ms, drafts of 10 ms: with every draft
  // accepted a token costs its draft and its row, 88 ms less than a plain step.
  GammaController c = Simulate(100, 2, 0.9, 40);
  c.Observe(1, 102, 0, 0);  // a plain step to weigh against
  c.ObserveDraft(4, 40.0);
  ASSERT_GT(c.gamma(), 0);
  EXPECT_NEAR(c.Saving(10, /*at_most=*/true), 10 * (102 - c.row_ms() - c.draft_ms()), 1e-6);
  // At the chosen gamma, less than that and more than nothing; none for no tokens.
  EXPECT_GT(c.Saving(10, false), 0);
  EXPECT_LT(c.Saving(10, false), c.Saving(10, true));
  EXPECT_EQ(c.Saving(0, false), 0);
  // Compute-bound steps of 6 ms against drafts of 7 ms: nothing to save, even at best.
  GammaController busy = Simulate(1, 5, 0.2, 20);
  busy.ObserveDraft(1, 7.0);
  EXPECT_EQ(busy.Saving(48, true), 0);
  EXPECT_EQ(busy.Saving(48, false), 0);
}

TEST(GammaControllerTest, DraftingWhileWaitingOnOwnCoresCostsOnlyTheRow) {
  // A link of 80 ms a pass, rows of 2 ms, drafts of 8 ms, 90% accepted. Drafting ahead while a
  // run is in flight, on cores of its own, costs the client nothing: only the row counts, so
  // drafts four times less likely still pay.
  GammaController c = Simulate(80, 2, 0.9, 40);
  c.ObserveDraft(4, 32.0);
  const double rate = c.MinSurvival() / (c.row_ms() + c.draft_ms());
  EXPECT_NEAR(c.MinSurvival(/*drafting_free=*/true), c.row_ms() * rate, 1e-9);
  EXPECT_LT(c.MinSurvival(/*drafting_free=*/true), c.MinSurvival() / 4);
  EXPECT_GT(c.MinSurvival(/*drafting_free=*/true), 0);
}

TEST(GammaControllerTest, ADrafterDearerThanAPlainStepIsNeverProbed) {
  // Before it has seen a draft, the controller takes the drafter's own measure of a draft's cost.
  // One plain step of 6 ms against drafts of 7 ms: even an always-right drafter could not gain,
  // so there is nothing to probe for, and the drafter is never asked.
  GammaController c(4, 16, true);
  c.ExpectDraftCost(7.0);
  EXPECT_NEAR(c.draft_ms(), 7.0, 1e-9);
  ASSERT_EQ(c.NextGamma(), 0);  // the first run measures a plain step
  c.Observe(1, 6.0, 0, 0);
  for (int i = 0; i < 20 * GammaController::kProbeEvery; ++i) ASSERT_EQ(c.NextGamma(), 0);
  // The same with drafts at 1 ms: probes come.
  GammaController cheap(4, 16, true);
  cheap.ExpectDraftCost(1.0);
  ASSERT_EQ(cheap.NextGamma(), 0);
  cheap.Observe(1, 6.0, 0, 0);
  int probes = 0;
  for (int i = 0; i < 4 * GammaController::kProbeEvery; ++i) probes += cheap.NextGamma();
  EXPECT_GE(probes, 1);
  // What was observed wins over the drafter's own measure.
  cheap.ObserveDraft(1, 3.0);
  cheap.ExpectDraftCost(9.0);
  EXPECT_LT(cheap.draft_ms(), 3.0);
}

TEST(GammaControllerTest, AnAccurateDrafterAtHalfAPlainStepIsUsed) {
  // A short link (plain steps of 33 ms: 27 ms fixed, rows at 5 ms), drafts at 12 ms that are
  // nearly always right: a draft and its row cost about half a plain step, and speculation still
  // pays (the q8_0 copy of the default model at 5 ms per hop: 1.6x).
  GammaController c(4, 16, true);
  c.ExpectDraftCost(12.0);
  ASSERT_EQ(c.NextGamma(), 0);
  c.Observe(1, 33.0, 0, 0);
  for (int i = 0; i < 40; ++i) {
    const int g = c.NextGamma();
    c.Observe(g + 1, 27 + 5.0 * (g + 1), g, i % 10 == 0 ? std::max(0, g - 1) : g);
    if (g > 0) c.ObserveDraft(g, 12.0 * g);
  }
  EXPECT_GE(c.gamma(), 2);
}

TEST(GammaControllerTest, NoisyPlainStepsDoNotRestartProbing) {
  // Drafts at 7 ms against quiet plain steps of 6 ms: no probes. Plain steps that mostly take
  // 10 ms (load on shared cores) do not bring them back; links that really slow down do.
  GammaController c(4, 16, true);
  c.ExpectDraftCost(7.0);
  ASSERT_EQ(c.NextGamma(), 0);
  c.Observe(1, 6.0, 0, 0);
  for (int i = 0; i < 40 * GammaController::kProbeEvery; ++i) {
    ASSERT_EQ(c.NextGamma(), 0) << i;
    c.Observe(1, i % 8 == 0 ? 6.0 : 10.0, 0, 0);
  }
  for (int i = 0; i < 30; ++i) c.Observe(1, 40, 0, 0);
  EXPECT_GE(c.NextGamma(), 1);
}

TEST(GammaControllerTest, FixedGammaStays) {
  GammaController c(3, 16, /*adaptive=*/false);
  c.Observe(40, 300, 0, 0);
  c.Observe(4, 200, 3, 0);
  EXPECT_EQ(c.gamma(), 3);
}

TEST(VerifyDraftTest, ExactMatchIsPlainSampling) {
  model::Sampler sampler({.temperature = 0.9f, .top_k = 0, .seed = 3});
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.7f, -1.0f, 0.2f};
  for (int64_t pos = 0; pos < 500; ++pos) {
    bool accepted;
    const int32_t t = VerifyDraft(sampler, logits, pos, {}, 3, 1.0f, false, &accepted);
    EXPECT_EQ(t, sampler.Sample(logits, pos, {}));
    EXPECT_EQ(accepted, t == 3);
  }
}

TEST(VerifyDraftTest, RejectionSamplingPreservesTheDistribution) {
  model::Sampler sampler({.temperature = 1.0f, .top_k = 0, .seed = 11});
  std::vector<float> logits = {1.0f, 2.0f, 0.5f, 1.7f, -1.0f, 0.2f};
  auto dist = sampler.Distribution(logits, {});
  for (int32_t draft : {1, 4}) {  // a likely and an unlikely draft
    SCOPED_TRACE(draft);
    std::map<int64_t, int> plain, spec;
    int accepted_count = 0;
    const int n = 30000;
    for (int64_t pos = 0; pos < n; ++pos) {
      plain[sampler.Sample(logits, pos, {})]++;
      bool accepted;
      spec[VerifyDraft(sampler, logits, pos + n, {}, draft, 1.0f, true, &accepted)]++;
      accepted_count += accepted;
    }
    int bins = 0;
    const double chi = ChiSquare(plain, spec, &bins);
    EXPECT_LT(chi, ChiSquareCritical(bins - 1)) << "bins " << bins;
    double p_draft = 0;
    for (auto& c : dist) p_draft += c.token == draft ? c.prob : 0;
    EXPECT_NEAR(accepted_count / double(n), p_draft, 0.02);
  }
}

class LocalSpeculativeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testkit::DefaultModelPresent());
    if (lm_ != nullptr) return;  // loaded for a suite before (fixtures derived from this one)
    LocalModelOptions o;
    o.path = testkit::DefaultModelPath();
    o.threads = 2;
    lm_ = LocalModel::Load(o)->release();
  }
  static LocalModel* lm_;

  std::vector<int32_t> Prompt(const std::string& text) {
    GenerateRequest r;
    r.prompt = text;
    r.chat = true;
    return *PromptTokens(lm_->tokenizer(), r);
  }

  std::vector<int32_t> Plain(const std::vector<int32_t>& prompt, const GenerateOptions& o) {
    auto session = lm_->NewSession();
    auto g = Generate(**session, lm_->tokenizer(), prompt, o);
    EXPECT_TRUE(g.ok()) << g.status();
    return g->tokens;
  }

  // Speculative generation over `chains` fresh local chains; fills `stats`.
  std::vector<int32_t> Speculative(const std::vector<int32_t>& prompt, const GenerateOptions& o,
                                   Drafter* drafter, SpeculativeOptions so, int chains,
                                   SpeculativeStats* stats = nullptr,
                                   std::vector<std::unique_ptr<LocalChain>>* keep = nullptr) {
    std::vector<std::unique_ptr<LocalChain>> owned;
    std::vector<Chain*> raw;
    for (int i = 0; i < chains; ++i) {
      owned.push_back(std::move(*lm_->NewChain()));
      raw.push_back(owned.back().get());
    }
    SpeculativeDecoder d(&lm_->embedder(), &lm_->head(), raw, &lm_->pool(), &lm_->tokenizer(),
                         drafter, so);
    auto g = d.Generate(prompt, o);
    EXPECT_TRUE(g.ok()) << g.status();
    if (stats) *stats = d.stats();
    if (keep) *keep = std::move(owned);
    return g.ok() ? g->tokens : std::vector<int32_t>();
  }
};

LocalModel* LocalSpeculativeTest::lm_ = nullptr;

GenerateOptions Options(float temperature, int tokens = 32) {
  GenerateOptions o;
  o.max_tokens = tokens;
  o.sampling.temperature = temperature;
  o.sampling.top_k = 40;
  o.sampling.seed = 1234;
  return o;
}

TEST_F(LocalSpeculativeTest, EveryDrafterAndModeGivesThePlainTokens) {
  const auto prompt = Prompt("Repeat after me: red, green, blue, red, green, blue.");
  NgramDrafter ngram;
  auto draft_model =
      ModelDrafter::Load(testkit::DefaultModelPath(), 0, lm_->model().hparams().n_vocab, 1);
  auto self = ModelDrafter::Load(testkit::DefaultModelPath(), 20, lm_->model().hparams().n_vocab, 1);
  ASSERT_TRUE(draft_model.ok() && self.ok());
  const auto truth_greedy = Plain(prompt, Options(0, 200));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), truth_greedy.begin(), truth_greedy.end());
  OracleDrafter oracle(truth, 0.7, 5, lm_->model().hparams().n_vocab);
  std::vector<std::pair<std::string, Drafter*>> drafters = {
      {"ngram", &ngram}, {"draft", draft_model->get()}, {"self:20", self->get()},
      {"oracle", &oracle}};
  for (float temperature : {0.0f, 0.8f}) {
    const auto want = Plain(prompt, Options(temperature));
    for (auto& [name, drafter] : drafters) {
      for (Mode mode : {Mode::kChain, Mode::kTree, Mode::kPipelined}) {
        for (int chains : {1, 2}) {
          if (chains == 2 && mode != Mode::kPipelined) continue;  // dsi = pipelined + replicas
          // Model drafters also with gamma fixed: locally a step costs less than a draft, and an
          // adaptive gamma does not draft at all.
          for (bool adaptive : {true, false}) {
            if (!adaptive && drafter->token_ms() == 0) continue;
            SCOPED_TRACE(::testing::Message() << name << " mode " << int(mode) << " chains "
                                            << chains << " T " << temperature << " adaptive "
                                            << adaptive);
            SpeculativeOptions so;
            so.mode = mode;
            so.gamma = 4;
            so.adaptive = adaptive;
            SpeculativeStats stats;
            EXPECT_EQ(Speculative(prompt, Options(temperature), drafter, so, chains, &stats),
                      want);
            if (!adaptive) {
              EXPECT_GT(stats.drafted, 0);
            }
          }
        }
      }
    }
  }
}

TEST_F(LocalSpeculativeTest, EightPromptsWithNgramChainAndPipelined) {
  const char* prompts[] = {
      "Summarize: the meeting moved to Tuesday; the meeting room is the blue room.",
      "Fix the bug: for (int i = 0; i <= n; i++) sum += a[i];",
      "What is 12 times 12?",
      "List the planets of the solar system.",
      "Translate to French: good morning, good night.",
      "Write a haiku about rain.",
      "Given the text 'Alice met Bob in Paris', who did Alice meet?",
      "Explain what a hash table is."};
  NgramDrafter ngram;
  for (const char* p : prompts) {
    SCOPED_TRACE(p);
    const auto prompt = Prompt(p);
    const auto want = Plain(prompt, Options(0));
    for (Mode mode : {Mode::kChain, Mode::kPipelined}) {
      SpeculativeOptions so;
      so.mode = mode;
      EXPECT_EQ(Speculative(prompt, Options(0), &ngram, so, 1), want);
    }
  }
}

TEST_F(LocalSpeculativeTest, CommittedKvEqualsTheKvOfTheCommittedText) {
  // I1: after speculation (with rejections, cancelled runs and draft trees), every cell of the
  // committed text holds bit for bit the K/V a plain run over the same tokens computes.
  const auto prompt = Prompt("Name three colors and three animals.");
  const auto truth_greedy = Plain(prompt, Options(0, 200));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), truth_greedy.begin(), truth_greedy.end());
  OracleDrafter oracle(truth, 0.6, 9, lm_->model().hparams().n_vocab);
  for (Mode mode : {Mode::kChain, Mode::kTree, Mode::kPipelined}) {
    SCOPED_TRACE(int(mode));
    SpeculativeOptions so;
    so.mode = mode;
    std::vector<std::unique_ptr<LocalChain>> chains;
    SpeculativeStats stats;
    const auto got = Speculative(prompt, Options(0, 24), &oracle, so, 1, &stats, &chains);
    ASSERT_EQ(got.size(), 24u);
    // The reference: prompt + every generated token but the last, fed plainly.
    std::vector<int32_t> text = prompt;
    text.insert(text.end(), got.begin(), got.end() - 1);
    auto plain = lm_->NewSession();
    ASSERT_TRUE((*plain)->Feed(text).ok());
    // Compare through a second local chain built the plain way.
    auto ref_chain = lm_->NewChain();
    std::vector<float> hidden(text.size() * lm_->embedder().n_embd());
    ASSERT_TRUE(lm_->embedder().Embed(text, hidden.data()).ok());
    std::vector<model::Row> rows(text.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = {static_cast<int32_t>(i), 1};
    std::vector<float> sink(lm_->embedder().n_embd());
    const int32_t last[1] = {static_cast<int32_t>(rows.size()) - 1};
    ASSERT_TRUE((*ref_chain)->Forward(rows, hidden.data(), last, sink.data()).ok());
    const model::KvCache& a = chains[0]->cache(0);
    const model::KvCache& b = (*ref_chain)->cache(0);
    EXPECT_EQ(a.SeqLength(0), static_cast<int32_t>(text.size()));
    EXPECT_EQ(a.used_cells(), static_cast<int32_t>(text.size())) << "speculation left cells";
    std::map<int32_t, int32_t> slot_a, slot_b;
    for (int32_t c = 0; c < static_cast<int32_t>(a.cells().size()); ++c) {
      if (a.cells()[c].seqs) slot_a[a.cells()[c].pos] = c;
    }
    for (int32_t c = 0; c < static_cast<int32_t>(b.cells().size()); ++c) {
      if (b.cells()[c].seqs) slot_b[b.cells()[c].pos] = c;
    }
    const size_t bytes = static_cast<size_t>(a.layout().kv_dim) * sizeof(uint16_t);
    for (auto [pos, sa] : slot_a) {
      for (int l = 0; l < a.layout().n_layers; ++l) {
        ASSERT_EQ(std::memcmp(a.K(sa, l), b.K(slot_b.at(pos), l), bytes), 0) << pos << " " << l;
        ASSERT_EQ(std::memcmp(a.V(sa, l), b.V(slot_b.at(pos), l), bytes), 0) << pos << " " << l;
      }
    }
  }
}

TEST_F(LocalSpeculativeTest, OracleAcceptanceFollowsItsAccuracy) {
  const auto prompt = Prompt("Tell me a long story about a dragon.");
  const auto greedy = Plain(prompt, Options(0, 160));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), greedy.begin(), greedy.end());
  for (double a : {0.5, 0.9}) {
    OracleDrafter oracle(truth, a, 17, lm_->model().hparams().n_vocab);
    SpeculativeOptions so;
    so.gamma = 4;
    so.adaptive = false;
    SpeculativeStats stats;
    EXPECT_EQ(Speculative(prompt, Options(0, 160), &oracle, so, 1, &stats), greedy);
    // Drafts are accepted until the first wrong one: E[accepted per pass] = a (1 - a^g) / (1 - a).
    const double expected = a * (1 - std::pow(a, 4)) / (1 - a);
    EXPECT_NEAR(stats.accepted_per_pass(), expected, 0.3 * expected) << "a " << a;
  }
}

TEST_F(LocalSpeculativeTest, PipelinedRunsAreCancelledOnRejection) {
  const auto prompt = Prompt("Count from one to twenty.");
  const auto greedy = Plain(prompt, Options(0, 64));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), greedy.begin(), greedy.end());
  OracleDrafter oracle(truth, 0.6, 23, lm_->model().hparams().n_vocab);
  SpeculativeOptions so;
  so.mode = Mode::kPipelined;
  so.max_in_flight = 3;
  so.adaptive = false;
  SpeculativeStats stats;
  // Locally a run finishes when submitted, so later runs are dropped after a rejection
  // (counted as wasted rows) rather than stopped; the remote test checks real cancellation.
  EXPECT_EQ(Speculative(prompt, Options(0, 64), &oracle, so, 1, &stats), greedy);
  EXPECT_GT(stats.cancelled_runs, 0);
  EXPECT_GT(stats.wasted_rows, 0);
}

TEST_F(LocalSpeculativeTest, WhatACallersOwnDrafterLearnedCarriesOverPerMode) {
  // A drafter the caller owns (the bench's oracle) learns across requests as a cached one does.
  const auto prompt = Prompt("Repeat after me: one two three, one two three.");
  NgramDrafter ngram;
  DrafterCache::Learned learned;
  RequestContext context{&lm_->embedder(), &lm_->head(), &lm_->tokenizer(), &lm_->pool(),
                         testkit::DefaultModelPath(), 1, &ngram, nullptr, &learned};
  GenerateRequest r;
  r.max_tokens = 16;
  r.sampling.temperature = 0;
  r.speculative.drafter = strata::Drafter::Ngram();
  r.speculative.mode = strata::SpeculativeMode::kChain;
  auto run = [&] {
    auto chain = lm_->NewChain();
    EXPECT_TRUE(chain.ok());
    auto got = RunTokens(prompt, r, context, {chain->get()}, nullptr);
    EXPECT_TRUE(got.ok()) << got.status();
  };
  run();
  ASSERT_NE(learned["chain"], nullptr);
  const void* first = learned["chain"].get();
  const auto* model = static_cast<const GammaController*>(first);
  EXPECT_GE(model->base_ms(), 0) << "the request taught it nothing";
  run();
  EXPECT_EQ(learned["chain"].get(), first);  // the same model, not a fresh one
  EXPECT_EQ(learned.count("pipelined"), 0u);
}

// A local chain whose cancelled runs answer only when the test says so, as a remote chain's do
// after a round trip; it counts the waits that would block on one.
class SlowCancelChain : public Chain {
 public:
  explicit SlowCancelChain(Chain* inner) : inner_(inner) {}
  absl::Status Forward(std::span<const model::Row> rows, const float* hidden,
                       std::span<const int32_t> out_rows, float* out) override {
    return inner_->Forward(rows, hidden, out_rows, out);
  }
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override {
    return inner_->Truncate(seq, from_pos);
  }
  absl::Status Commit(model::SeqId seq, int32_t until_pos) override {
    return inner_->Commit(seq, until_pos);
  }
  std::vector<HopInfo> Hops() const override { return inner_->Hops(); }
  absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows, const float* hidden,
                                     std::span<const int32_t> out_rows) override {
    return inner_->SubmitRun(rows, hidden, out_rows);
  }
  absl::Status WaitRun(uint64_t run, float* out) override {
    if (cancelled_.contains(run)) {
      if (!RunReady(run)) ++blocking_waits;
      return absl::CancelledError("cancelled");
    }
    return inner_->WaitRun(run, out);
  }
  bool RunReady(uint64_t run) override { return !cancelled_.contains(run) || answer_cancelled; }
  absl::StatusOr<uint64_t> SubmitVerifiedRun(std::span<const model::Row> rows,
                                             const float* hidden,
                                             std::span<const int32_t> out_rows,
                                             const model::VerifySpec& verify) override {
    return inner_->SubmitVerifiedRun(rows, hidden, out_rows, verify);
  }
  absl::Status WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) override {
    return inner_->WaitVerdict(run, tokens);
  }
  void CancelRuns(std::span<const uint64_t> runs) override {
    cancelled_.insert(runs.begin(), runs.end());
  }
  void TruncateAsync(model::SeqId seq, int32_t from_pos) override {
    inner_->TruncateAsync(seq, from_pos);
  }
  void CommitAsync(model::SeqId seq, int32_t until_pos) override {
    inner_->CommitAsync(seq, until_pos);
  }

  int cancelled() const { return static_cast<int>(cancelled_.size()); }
  bool answer_cancelled = false;  // whether cancelled runs have answered (RunReady)
  int blocking_waits = 0;         // waits for a cancelled run that had not answered

 private:
  Chain* inner_;
  std::set<uint64_t> cancelled_;
};

TEST_F(LocalSpeculativeTest, NothingWaitsForACancelledRun) {
  // A rejection cancels the runs behind it, and the end of the request those still in flight:
  // their answers would only hold up the runs that replace them, or the caller.
  const auto prompt = Prompt("Count from one to twenty.");
  const auto greedy = Plain(prompt, Options(0, 48));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), greedy.begin(), greedy.end());
  for (bool answered : {false, true}) {
    SCOPED_TRACE(answered);
    OracleDrafter oracle(truth, 0.7, 5, lm_->model().hparams().n_vocab);
    auto local = lm_->NewChain();
    ASSERT_TRUE(local.ok());
    SlowCancelChain chain(local->get());
    SpeculativeOptions so;
    so.mode = Mode::kPipelined;
    so.max_in_flight = 3;
    so.adaptive = false;
    SpeculativeDecoder d(&lm_->embedder(), &lm_->head(), {&chain}, &lm_->pool(),
                         &lm_->tokenizer(), &oracle, so);
    // Cancelled runs either never answer within the request, or answer before the next wait:
    // both must give the plain tokens, and only answered ones are collected.
    chain.answer_cancelled = answered;
    auto g = d.Generate(prompt, Options(0, 48));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->tokens, greedy);
    EXPECT_GT(chain.cancelled(), 0);
    EXPECT_EQ(chain.blocking_waits, 0);
    EXPECT_GT(d.stats().wasted_rows, 0);
  }
}

TEST_F(LocalSpeculativeTest, TheLastStageVerifiesAndGivesThePlainTokens) {
  // Last-hop verification: the chain's last stage decides the tokens with the head (greedy,
  // seeded sampling, and with a repetition penalty whose history the stage gets only the tail of).
  const auto prompt = Prompt("Repeat after me: red, green, blue, red, green, blue.");
  NgramDrafter ngram;
  auto draft_model =
      ModelDrafter::Load(testkit::DefaultModelPath(), 0, lm_->model().hparams().n_vocab, 1);
  ASSERT_TRUE(draft_model.ok());
  const auto truth_greedy = Plain(prompt, Options(0, 200));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), truth_greedy.begin(), truth_greedy.end());
  OracleDrafter oracle(truth, 0.7, 5, lm_->model().hparams().n_vocab);
  std::vector<std::pair<std::string, Drafter*>> drafters = {
      {"ngram", &ngram}, {"draft", draft_model->get()}, {"oracle", &oracle}};
  for (float penalty : {1.0f, 1.3f}) {
    for (float temperature : {0.0f, 0.8f}) {
      GenerateOptions o = Options(temperature);
      o.sampling.repeat_penalty = penalty;
      o.sampling.repeat_last_n = 8;
      const auto want = Plain(prompt, o);
      for (auto& [name, drafter] : drafters) {
        if (penalty != 1.0f && drafter == &oracle) continue;  // it knows the unpenalized text
        for (Mode mode : {Mode::kChain, Mode::kPipelined}) {
          for (int chains : {1, 2}) {
            if (chains == 2 && mode != Mode::kPipelined) continue;
            SCOPED_TRACE(::testing::Message() << name << " mode " << int(mode) << " chains "
                                            << chains << " T " << temperature << " penalty "
                                            << penalty);
            SpeculativeOptions so;
            so.mode = mode;
            so.gamma = 4;
            so.adaptive = false;
            so.verify_at_last_hop = true;
            SpeculativeStats stats;
            EXPECT_EQ(Speculative(prompt, o, drafter, so, chains, &stats), want);
            EXPECT_GT(stats.drafted, 0);
          }
        }
      }
    }
  }
  // Draft trees are verified at the client: asking the last hop is a clear error.
  auto chain = lm_->NewChain();
  SpeculativeOptions so;
  so.mode = Mode::kTree;
  so.verify_at_last_hop = true;
  SpeculativeDecoder d(&lm_->embedder(), &lm_->head(), {chain->get()}, &lm_->pool(),
                       &lm_->tokenizer(), &ngram, so);
  EXPECT_EQ(d.Generate(prompt, Options(0)).status().code(), absl::StatusCode::kInvalidArgument);
}

// A drafter that reports a cost and counts what it is asked: it never has a guess. It reads
// nothing, so all of any text is unread, at `read_ms` a token.
class CountingDrafter final : public Drafter {
 public:
  explicit CountingDrafter(double token_ms, double read_ms = 0)
      : token_ms_(token_ms), read_ms_(read_ms) {}
  std::string name() const override { return "counting"; }
  std::vector<DraftToken> Draft(std::span<const int32_t>, int) override {
    ++asked;
    return {};
  }
  std::vector<DraftToken> Next(std::span<const int32_t>, int) override {
    ++asked;
    return {};
  }
  void Read(std::span<const int32_t>) override { ++asked; }
  double token_ms() const override { return token_ms_; }
  double read_ms() const override { return read_ms_; }
  int Unread(std::span<const int32_t> text) const override {
    return static_cast<int>(text.size());
  }
  int asked = 0;

 private:
  double token_ms_, read_ms_;
};

// Drafters by their cost: what a draft costs, and what reading a token of text costs.
class DrafterCostTest : public LocalSpeculativeTest {
 protected:
  // In chain and pipelined mode, a drafter of costs `unused` is never asked and one of costs
  // `used` is; both give the plain tokens.
  void ExpectOnlyTheCheapAsked(std::pair<double, double> unused, std::pair<double, double> used) {
    const auto prompt = Prompt("Name three rivers.");
    const auto want = Plain(prompt, Options(0, 12));
    for (Mode mode : {Mode::kChain, Mode::kPipelined}) {
      SpeculativeOptions so;
      so.mode = mode;
      CountingDrafter never(unused.first, unused.second), asked(used.first, used.second);
      EXPECT_EQ(Speculative(prompt, Options(0, 12), &never, so, 1), want);
      EXPECT_EQ(never.asked, 0) << int(mode);
      EXPECT_EQ(Speculative(prompt, Options(0, 12), &asked, so, 1), want);
      EXPECT_GE(asked.asked, 1) << int(mode);
    }
  }
};

TEST_F(DrafterCostTest, ACostlyDrafterWaitsForAPlainStepBeforeReadingThePrompt) {
  // Locally a step costs far less than this drafter's 500 ms a draft: a fresh cost model measures
  // a plain step before the drafter reads anything, and then never asks it. A free drafter reads
  // the prompt while the prompt's pass is in flight.
  ExpectOnlyTheCheapAsked({500.0, 0.0}, {0.0, 0.0});
}

TEST_F(DrafterCostTest, ADrafterIsNotAskedWhenReadingThePromptCostsMoreThanItCanSave) {
  // Drafts of 0.5 ms would pay against local steps, but first the drafter would read the prompt
  // at 50 ms a token, more than drafting can save over 12 tokens: the request goes on without
  // it. At a thousandth of a millisecond a token, the same drafter is asked.
  ExpectOnlyTheCheapAsked({0.5, 50.0}, {0.5, 0.001});
}

TEST(ModelDrafterTest, MeasuresWhatReadingCostsAndKnowsWhatItHasRead) {
  const std::string path = testkit::TempPath("-reader.gguf");
  ASSERT_TRUE(testkit::WriteTinyModel(testkit::TinyModelSpec{}, path).ok());
  auto d = ModelDrafter::Load(path, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT((*d)->read_ms(), 0);
  std::vector<int32_t> text = {72, 101, 108, 108, 111, 32, 119};
  EXPECT_EQ((*d)->Unread(text), static_cast<int>(text.size()));
  (*d)->Read(text);
  EXPECT_EQ((*d)->Unread(text), 0);
  text.push_back(111);
  text.push_back(114);
  EXPECT_EQ((*d)->Unread(text), 2);
  // A text that parts from what was read after two tokens: all but those two are unread.
  const std::vector<int32_t> other = {72, 101, 7, 8};
  EXPECT_EQ((*d)->Unread(other), 2);
  EXPECT_EQ(NgramDrafter().Unread(text), 0);
}

// `strata quantize --layers K` writes the model that exits after K layers: as a draft model it
// proposes exactly what self-speculation from the first K layers of the whole file does.
TEST(ModelDrafterTest, AModelCutToItsFirstLayersDraftsLikeSelfSpeculation) {
  const std::string whole = testkit::TempPath("-whole.gguf");
  const std::string cut = testkit::TempPath("-cut.gguf");
  testkit::TinyModelSpec spec;
  spec.n_layer = 4;
  ASSERT_TRUE(testkit::WriteTinyModel(spec, whole).ok());
  gguf::RequantizeOptions options;
  options.type = spec.weight_type;  // matrices already of that type are copied as they are
  options.keep_embeddings = true;
  options.layers = 2;
  auto report = gguf::Requantize(whole, cut, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->converted, 0);
  EXPECT_GT(report->dropped, 0);

  auto from_cut = ModelDrafter::Load(cut, 0, testkit::kTinyVocab, 1);
  auto self = ModelDrafter::Load(whole, 2, testkit::kTinyVocab, 1);
  auto full = ModelDrafter::Load(whole, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(from_cut.ok() && self.ok() && full.ok());
  std::vector<int32_t> text = {72, 101, 108, 108, 111, 32, 119, 111};
  bool differs_from_full = false;
  for (int step = 0; step < 6; ++step) {
    const std::vector<DraftToken> a = (*from_cut)->Next(text, 4);
    const std::vector<DraftToken> b = (*self)->Next(text, 4);
    const std::vector<DraftToken> c = (*full)->Next(text, 4);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].token, b[i].token) << "step " << step << ", candidate " << i;
      EXPECT_EQ(a[i].prob, b[i].prob) << "step " << step << ", candidate " << i;
    }
    differs_from_full |= a[0].token != c[0].token || a[0].prob != c[0].prob;
    text.push_back(a[0].token);
  }
  // Two layers are not four: the comparison would notice a cut that kept every layer.
  EXPECT_TRUE(differs_from_full);
}

// End to end on a tiny random model: rejection-sampled generations of two tokens follow the same
// distribution as plain sampling.
TEST(RejectionSamplingTest, ShortContinuationsMatchPlainSampling) {
  const std::string path = testkit::TempPath("-spec.gguf");
  testkit::TinyModelSpec spec;
  spec.n_layer = 2;
  ASSERT_TRUE(testkit::WriteTinyModel(spec, path).ok());
  LocalModelOptions o;
  o.path = path;
  o.threads = 1;
  auto lm = LocalModel::Load(o);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111};
  // The model itself, drafting greedily: at a high temperature (its logits spread widely) its
  // argmax is the target's token only part of the time, so both acceptance and the residual
  // draw are exercised.
  auto greedy = ModelDrafter::Load(path, 0, testkit::kTinyVocab, 1);
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  int drafted = 0, accepted = 0;
  // Verified at the client, and by the chain's last stage (last-hop verification).
  std::map<int64_t, int> plain, spec_hist, last_hop_hist;
  const int n = 1500;
  for (int i = 0; i < n; ++i) {
    GenerateOptions go;
    go.max_tokens = 2;
    go.stop_at_end_of_generation = false;
    go.sampling = {.temperature = 30.0f, .top_k = 4, .seed = static_cast<uint64_t>(i)};
    auto session = (*lm)->NewSession();
    auto g = Generate(**session, (*lm)->tokenizer(), prompt, go);
    ASSERT_TRUE(g.ok());
    plain[g->tokens[0] * 1000 + g->tokens[1]]++;
    go.sampling.seed = static_cast<uint64_t>(i + n);
    for (bool last_hop : {false, true}) {
      auto chain = (*lm)->NewChain();
      SpeculativeOptions so;
      so.rejection_sampling = true;
      so.gamma = 1;
      so.adaptive = false;
      so.verify_at_last_hop = last_hop;
      SpeculativeDecoder d(&(*lm)->embedder(), &(*lm)->head(), {chain->get()}, &(*lm)->pool(),
                           &(*lm)->tokenizer(), greedy->get(), so);
      auto s = d.Generate(prompt, go);
      ASSERT_TRUE(s.ok());
      drafted += d.stats().drafted;
      accepted += d.stats().accepted;
      (last_hop ? last_hop_hist : spec_hist)[s->tokens[0] * 1000 + s->tokens[1]]++;
    }
  }
  for (const auto* hist : {&spec_hist, &last_hop_hist}) {
    int bins = 0;
    const double chi = ChiSquare(plain, *hist, &bins);
    ASSERT_GE(bins, 4);
    EXPECT_LT(chi, ChiSquareCritical(bins - 1)) << bins << " bins";
  }
  EXPECT_GT(accepted, drafted / 10);
  EXPECT_LT(accepted, drafted * 9 / 10);
}

}  // namespace
}  // namespace strata::client
