// Speculative decoding in one process: every drafter and mode gives exactly the plain tokens
// (greedy and seeded sampling), the committed KV equals the KV of the committed text, nothing
// waits for a cancelled run, and drafters are asked only where they can pay.
#include "client/speculative.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "client/drafter.h"
#include "client/generate.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "client/run_request.h"
#include "model/sampling.h"
#include "tests/testing/paths.h"

namespace strata::client {
namespace {

using Mode = SpeculativeOptions::Mode;

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
  std::vector<int32_t> Speculative(const std::vector<int32_t>& prompt,
                                   const GenerateOptions& o,
                                   Drafter* drafter,
                                   SpeculativeOptions so,
                                   int chains,
                                   SpeculativeStats* stats = nullptr,
                                   std::vector<std::unique_ptr<LocalChain>>* keep = nullptr) {
    std::vector<std::unique_ptr<LocalChain>> owned;
    std::vector<Chain*> raw;
    for (int i = 0; i < chains; ++i) {
      owned.push_back(std::move(*lm_->NewChain()));
      raw.push_back(owned.back().get());
    }
    SpeculativeDecoder d(
        &lm_->embedder(), &lm_->head(), raw, &lm_->pool(), &lm_->tokenizer(), drafter, so);
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
  auto self =
      ModelDrafter::Load(testkit::DefaultModelPath(), 20, lm_->model().hparams().n_vocab, 1);
  ASSERT_TRUE(draft_model.ok() && self.ok());
  const auto truth_greedy = Plain(prompt, Options(0, 200));
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), truth_greedy.begin(), truth_greedy.end());
  OracleDrafter oracle(truth, 0.7, 5, lm_->model().hparams().n_vocab);
  std::vector<std::pair<std::string, Drafter*>> drafters = {{"ngram", &ngram},
                                                            {"draft", draft_model->get()},
                                                            {"self:20", self->get()},
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
            SCOPED_TRACE(::testing::Message()
                         << name << " mode " << int(mode) << " chains " << chains << " T "
                         << temperature << " adaptive " << adaptive);
            SpeculativeOptions so;
            so.mode = mode;
            so.gamma = 4;
            so.adaptive = adaptive;
            SpeculativeStats stats;
            EXPECT_EQ(Speculative(prompt, Options(temperature), drafter, so, chains, &stats), want);
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
  RequestContext context{&lm_->embedder(),
                         &lm_->head(),
                         &lm_->tokenizer(),
                         &lm_->pool(),
                         testkit::DefaultModelPath(),
                         1,
                         &ngram,
                         nullptr,
                         &learned};
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
  absl::Status Forward(std::span<const model::Row> rows,
                       const float* hidden,
                       std::span<const int32_t> out_rows,
                       float* out) override {
    return inner_->Forward(rows, hidden, out_rows, out);
  }
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override {
    return inner_->Truncate(seq, from_pos);
  }
  absl::Status Commit(model::SeqId seq, int32_t until_pos) override {
    return inner_->Commit(seq, until_pos);
  }
  std::vector<HopInfo> Hops() const override { return inner_->Hops(); }
  absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows,
                                     const float* hidden,
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
    SpeculativeDecoder d(
        &lm_->embedder(), &lm_->head(), {&chain}, &lm_->pool(), &lm_->tokenizer(), &oracle, so);
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
            SCOPED_TRACE(::testing::Message()
                         << name << " mode " << int(mode) << " chains " << chains << " T "
                         << temperature << " penalty " << penalty);
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
  SpeculativeDecoder d(
      &lm_->embedder(), &lm_->head(), {chain->get()}, &lm_->pool(), &lm_->tokenizer(), &ngram, so);
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
  int Unread(std::span<const int32_t> text) const override { return static_cast<int>(text.size()); }
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

}  // namespace
}  // namespace strata::client
