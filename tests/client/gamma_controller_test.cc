// GammaController, the cost model behind speculative decoding, on simulated links: drafts per
// pass, runs in flight, probes, and what drafting and plain steps are measured to cost.
#include "client/gamma_controller.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace strata::client {
namespace {

// Passes of a simulated link: `base` ms whatever the size plus `per_row` ms per row. The prompt
// pass comes first, as in a generation (at prefill speed, which the fit must ignore), then
// decode passes of the sizes the controller picks.
GammaController Simulate(double base, double per_row, double accept, int passes) {
  GammaController c(/*gamma=*/4, /*max_gamma=*/16, /*adaptive=*/true);
  c.Observe(40, base + per_row * 10, 0, 0);  // the prompt: 40 rows at a quarter of the cost
  for (int i = 0; i < passes; ++i) {
    const int g = c.NextGamma();
    // Expected accepted drafts of g at acceptance `accept`, rounded: deterministic.
    const int accepted =
        static_cast<int>(std::lround(accept * (1 - std::pow(accept, g)) / (1 - accept)));
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
  for (const Case& k : {Case{87, 6.5, 0.85, 9.5},
                        Case{200, 1.5, 0.7, 3},
                        Case{100, 1, 0.95, 4},
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

}  // namespace
}  // namespace strata::client
