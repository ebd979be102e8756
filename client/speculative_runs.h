// One request of speculative decoding by runs (SpeculativeOptions::Mode kChain and kPipelined,
// over one chain or several): the loop that sends runs, drafts while they are in flight and
// settles tokens from their answers.
//
// A run carries the positions its chain has not seen yet: catch-up rows for a chain that is
// behind, the last settled token and the drafts beyond it. Up to the plan's number of runs are
// kept in flight (one in chain mode), each drafting beyond everything sent before it; the oldest
// one's answer decides its tokens, and a rejection cancels the runs it invalidates and truncates
// their chains back to what is settled.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/chain.h"
#include "client/drafter.h"
#include "client/gamma_controller.h"
#include "client/generate.h"
#include "client/speculative.h"

namespace strata::client {

class SpeculativeRuns {
 public:
  // Generate's arguments, for `decoder`, whose chains, drafter, head, options, stats and cost
  // model the request uses. All must outlive this.
  SpeculativeRuns(SpeculativeDecoder* decoder,
                  std::span<const int32_t> prompt,
                  const GenerateOptions& options,
                  const strata::TokenCallback& on_token);

  // Generates the request's tokens. Call once.
  absl::StatusOr<Generation> Generate();

 private:
  // A run sent to a chain.
  struct Run {
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

  // A drafter that has more than this of the text left to read (Drafter::Unread) catches up
  // first.
  static constexpr int kCatchUp = 8;

  // Sending runs.
  //
  // How many runs to keep going, and the drafts each carries.
  GammaController::Pipeline Plan() const;
  // Keeps up to plan.runs runs going, drafting ahead of the last one.
  absl::Status SendRuns(const GammaController::Pipeline& plan);
  // The least busy chain among as many as there are runs to keep going (with one run at a time
  // only the first: a second chain would first have to catch up on the whole text), and of those
  // the one with the least to catch up on.
  size_t ChooseChain(int max_runs) const;
  // Whether chain `c` may take the next run, `most_fed` being the most positions a chain it is
  // chosen among holds: a chain that is behind takes it only when computing its catch-up rows
  // costs less than the network time a concurrent run saves (on a compute-bound swarm it would
  // only add rows).
  bool Eligible(size_t c, int32_t most_fed) const;
  // Drafts for the next run (0: none). New drafts go beyond everything already drafted, so that
  // runs on different chains verify different positions; a chain that is behind catches up
  // inside its run.
  int ChooseGamma(const GammaController::Pipeline& plan);
  // The end of the text the next run wants (a position): gamma + 1 positions beyond everything
  // sent (drafts prepared while earlier runs were in flight are used first). The first run is
  // the prompt alone: a model drafter reads the prompt while it is in flight (UseTheWait) rather
  // than before it.
  int32_t Want(int gamma, int max_runs) const;
  // Drafts until the text reaches `want`, the drafts stop paying or the drafter has no guess.
  // False when the front run's answer arrived first: it is taken, and this run drafted on after.
  bool DraftUpTo(int32_t want);
  // Whether the oldest run in flight has been answered (or failed, or was cancelled).
  bool FrontAnswered() const;
  // Sends the text from what chain `c` holds up to `end` as a run.
  absl::Status Send(size_t c, int32_t end);

  // Waiting for the oldest run.
  //
  // What the client does while `run`, the oldest, is in flight: the drafter reads the text
  // beside the first pass, or before a probe, and keeps drafting beyond the last run.
  void UseTheWait(Run& run, const GammaController::Pipeline& plan);
  // Waits for `run` and uses its answer.
  absl::Status Collect(const Run& run);
  // `run`'s chain failed over and holds the answered runs only: its runs in flight are dropped
  // and it is resent from there.
  void Restart(const Run& run);
  // Settles the tokens `run`'s answer decides (`out_count` out rows) and learns from it.
  void Settle(const Run& run, int32_t out_count);
  // Settles the first `decided` out rows of `run` (those that decide a position not settled
  // yet); returns how many drafts were accepted.
  int DecideRows(const Run& run, int32_t decided);
  // The target's token from out row `i` of the answered run (its logits decide position `q` + 1),
  // and whether `draft` (the token drafted there, or -1) is accepted.
  int32_t Verdict(int32_t i, int32_t q, bool has_draft, int32_t draft, bool* accepted);

  // Shared by both.
  //
  // Runs in flight on chain `c`, not counting cancelled ones.
  int InFlight(size_t c) const;
  // Forgets everything from position `pos` on: runs holding it are cancelled and chains drop it.
  // A cancelled run may have been skipped by some hops and computed by others, so its chain
  // drops everything from the run's first position (re-sent later as catch-up rows), keeping
  // every hop of the chain alike.
  void Invalidate(int32_t pos);
  // Collects the stale runs that were answered (without waiting for any).
  void Reap();
  // The chance that every draft beyond the settled text is accepted, by the drafter's confidence
  // in each.
  double Survival() const;
  // One more draft beyond the text; false when the drafter has no guess.
  bool DraftOne();
  // A costly drafter that a fresh cost model has not yet weighed against a plain step waits for
  // one before it reads the text: where a plain step is cheaper than a draft (a fast swarm on
  // the client's own cores), reading the prompt beside the prompt pass would only slow both.
  // (A drafter is costly for its drafts, or for what it has to read first.)
  bool WaitForPlainStep() const;
  // Before a model drafter reads what it has not seen of the text (the prompt of a request, or
  // what an idle drafter missed before a probe), that reading must be able to pay for itself
  // over the tokens this request may still generate: at the chosen gamma for a first read, or
  // with every draft accepted for a probe. Where it cannot (a short request on a fast swarm),
  // the request goes on without drafts.
  bool ReadPays(bool probe) const;

  SpeculativeDecoder& decoder_;
  const std::vector<Chain*>& chains_;
  Drafter* const drafter_;
  const SpeculativeOptions& options_;
  SpeculativeStats& stats_;
  GammaController& gamma_control_;
  const int max_tokens_;  // the request's
  const int width_;       // floats per hidden state
  const size_t n_chains_;
  const bool pipelined_;

  Generation result_;
  Emitter emitter_;
  // tokens_[0, certain_) are settled (the prompt and the generated text); the rest are drafts.
  std::vector<int32_t> tokens_;
  std::vector<float> probs_;  // the drafter's confidence in each token (1 where settled)
  int32_t certain_;
  std::vector<int32_t> fed_;        // positions held by each chain
  std::vector<int32_t> confirmed_;  // of which answered (not in flight)
  std::deque<Run> runs_;            // in flight, in submission order
  // Runs a rejection cancelled: never waited for (their rows were wasted when they were
  // cancelled), only collected once answered, so they hold up neither the answers behind them
  // nor the runs that replace them.
  std::vector<Run> stale_;
  const absl::Time start_;
  bool drafting_off_ = false;     // the request goes on without drafts (ReadPays)
  bool drafted_before_ = false;   // the drafter had its turn beside a pass: runs carry drafts
  std::vector<float> hidden_;     // the rows of the run being sent
  std::vector<float> out_;        // the out rows of the answered run
  std::vector<int32_t> verdict_;  // the tokens of the answered run, verified at the last hop
  std::vector<float> scratch_;    // what stale runs answered, dropped
  std::vector<int32_t> scratch_tokens_;
};

}  // namespace strata::client
