// Speculative decoding through a real swarm: every drafter and mode gives the plain tokens,
// runs are really cancelled along the chain, every hop applies the same ops (I2), and a
// failover in the middle of speculation keeps the tokens (I4).
#include <gtest/gtest.h>

#include "client/local_model.h"
#include "client/prompt.h"
#include "client/run_request.h"
#include "client/swarm_client.h"
#include "strata/client.h"
#include "tests/testing/paths.h"
#include "tests/testing/swarm.h"

namespace strata {
namespace {

const char* kPrompts[] = {
    "Summarize: the meeting moved to Tuesday; the meeting room is the blue room.",
    "Fix the bug: for (int i = 0; i <= n; i++) sum += a[i];",
    "What is 12 times 12?",
    "List the planets of the solar system.",
    "Given the text 'Alice met Bob in Paris in May', where did Alice meet Bob?",
    "Write a haiku about rain.",
    "Translate to French: good morning, good night.",
    "Explain what a hash table is."};

GenerateRequest Request(const std::string& prompt,
                        float temperature,
                        const std::string& drafter,
                        const std::string& mode) {
  GenerateRequest r;
  r.prompt = prompt;
  r.chat = true;
  r.max_tokens = 32;
  r.sampling.temperature = temperature;
  r.sampling.seed = 99;
  absl::StatusOr<Drafter> d = ParseDrafter(drafter);
  absl::StatusOr<SpeculativeMode> m = ParseSpeculativeMode(mode);
  EXPECT_TRUE(d.ok() && m.ok()) << drafter << ", " << mode;
  r.speculative.drafter = d.value_or(Drafter::None());
  r.speculative.mode = m.value_or(SpeculativeMode::kChain);
  return r;
}

std::vector<int32_t> Local(const GenerateRequest& r) {
  static client::LocalModel* lm = [] {
    client::LocalModelOptions o;
    o.path = testkit::DefaultModelPath();
    o.threads = 2;
    return client::LocalModel::Load(o)->release();
  }();
  GenerateRequest plain = r;
  plain.speculative.drafter = Drafter::None();
  auto chain = lm->NewChain();
  client::RequestContext ctx{
      &lm->embedder(), &lm->head(), &lm->tokenizer(), &lm->pool(), testkit::DefaultModelPath(), 1};
  auto g = client::RunRequest(plain, ctx, {chain->get()}, nullptr);
  EXPECT_TRUE(g.ok()) << g.status();
  return g->token_ids;
}

class SpeculativeSwarmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testkit::DefaultModelPresent());
    swarm_ = testkit::StartSwarm().release();
    // A 3-hop route, and a disjoint 2-hop replica route for DSI.
    for (const char* layers : {"0:10", "10:20", "20:30", "0:15", "15:30"}) {
      testkit::NodeSpec spec;
      spec.layers = layers;
      ASSERT_TRUE(swarm_->AddNode(spec).ok());
    }
    ASSERT_TRUE(swarm_->WaitUntilServing(5).ok());
  }
  static void TearDownTestSuite() { delete swarm_; }

  std::unique_ptr<client::SwarmClient> Connect() {
    ClientOptions o;
    o.coordinators = swarm_->coordinators();
    o.model_path = testkit::DefaultModelPath();
    o.threads = 1;
    auto c = client::SwarmClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  static testkit::LocalSwarm* swarm_;
};

testkit::LocalSwarm* SpeculativeSwarmTest::swarm_ = nullptr;

TEST_F(SpeculativeSwarmTest, EveryModeGivesThePlainTokensOverEightPrompts) {
  auto client = Connect();
  for (const char* p : kPrompts) {
    for (float t : {0.0f, 0.8f}) {
      const auto want = Local(Request(p, t, "none", "chain"));
      for (const char* mode : {"chain", "tree", "pipelined", "dsi"}) {
        SCOPED_TRACE(::testing::Message() << p << " T=" << t << " " << mode);
        auto got = client->Generate(Request(p, t, "ngram", mode), nullptr);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->token_ids, want);
        EXPECT_GT(got->passes, 0);
      }
    }
  }
}

TEST_F(SpeculativeSwarmTest, ModelDraftersGiveThePlainTokens) {
  auto client = Connect();
  const std::string draft = "draft:" + testkit::DefaultModelPath();
  ASSERT_TRUE(client->LoadDrafter(*ParseDrafter(draft)).ok());
  EXPECT_EQ(client->LoadDrafter(Drafter::Model("/nonexistent.gguf")).code(),
            absl::StatusCode::kNotFound);
  for (int i = 0; i < 2; ++i) {
    const auto want = Local(Request(kPrompts[i], 0, "none", "chain"));
    for (const std::string& drafter : {draft, std::string("self:20")}) {
      for (const char* mode : {"chain", "pipelined"}) {
        // Adaptive, and fixed at 4 drafts a run: on loopback an adaptive gamma may find that a
        // model drafter costs about a plain step and not draft at all.
        for (bool adaptive : {true, false}) {
          SCOPED_TRACE(::testing::Message() << drafter << " " << mode << " adaptive " << adaptive);
          GenerateRequest r = Request(kPrompts[i], 0, drafter, mode);
          r.speculative.gamma = 4;
          r.speculative.adaptive = adaptive;
          auto got = client->Generate(r, nullptr);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(got->token_ids, want);
        }
      }
    }
  }
  // The target drafting for itself is always right: every draft is accepted (gamma fixed at 4:
  // on loopback an adaptive gamma would weigh the drafter's cost and send fewer).
  GenerateRequest fixed = Request(kPrompts[3], 0, draft, "chain");
  fixed.speculative.gamma = 4;
  fixed.speculative.adaptive = false;
  auto same = client->Generate(fixed, nullptr);
  ASSERT_TRUE(same.ok());
  EXPECT_GT(same->accepted_per_pass, 3.0);
}

TEST_F(SpeculativeSwarmTest, EveryHopAppliesTheSameOpsAndKeepsOnlyCommittedText) {
  auto client = Connect();
  const GenerateRequest r = Request(kPrompts[0], 0, "ngram", "pipelined");
  auto chain = client->OpenChain();
  ASSERT_TRUE(chain.ok()) << chain.status();
  client::LocalModelOptions lo;
  lo.path = testkit::DefaultModelPath();
  lo.threads = 1;
  auto lm = client::LocalModel::Load(lo);
  client::RequestContext ctx{&(*lm)->embedder(),
                             &(*lm)->head(),
                             &(*lm)->tokenizer(),
                             &(*lm)->pool(),
                             testkit::DefaultModelPath(),
                             1};
  auto got = client::RunRequest(r, ctx, {chain->get()}, nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->token_ids, Local(r));
  auto states = (*chain)->State();
  ASSERT_TRUE(states.ok()) << states.status();
  ASSERT_EQ(states->size(), (*chain)->Hops().size());
  const int committed = got->prompt_tokens + static_cast<int>(got->token_ids.size()) - 1;
  for (const v1::SessionState& s : *states) {
    // I2: the same ops, in the same order, on every hop — so the same KV everywhere.
    EXPECT_EQ(s.applied_op_seq(), states->front().applied_op_seq());
    ASSERT_EQ(s.seqs_size(), 1);
    EXPECT_EQ(s.seqs(0).seq(), 0);  // no draft sequences left behind
    EXPECT_EQ(s.seqs(0).length(), states->front().seqs(0).length());
    EXPECT_EQ(s.seqs(0).cells(), s.seqs(0).length());  // one cell per position
    EXPECT_GE(s.seqs(0).length(), committed);
  }
}

TEST_F(SpeculativeSwarmTest, TheLastHopVerifiesAndGivesThePlainTokens) {
  // The node serving the last layers decides the tokens (a verified run's answer carries tokens
  // only: the client has no hidden states to decide from itself).
  auto client = Connect();
  const std::string draft = "draft:" + testkit::DefaultModelPath();
  for (int i = 0; i < 4; ++i) {
    for (float t : {0.0f, 0.8f}) {
      const auto want = Local(Request(kPrompts[i], t, "none", "chain"));
      for (const char* mode : {"chain", "pipelined", "dsi"}) {
        for (const std::string& drafter : {std::string("ngram"), draft}) {
          if (drafter == draft && i > 0) continue;  // one prompt for the (slower) draft model
          SCOPED_TRACE(::testing::Message()
                       << kPrompts[i] << " T=" << t << " " << mode << " " << drafter);
          GenerateRequest r = Request(kPrompts[i], t, drafter, mode);
          r.speculative.verify_at_last_hop = true;
          r.speculative.adaptive = drafter != draft;  // a draft model drafts at a fixed gamma
          auto got = client->Generate(r, nullptr);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(got->token_ids, want);
          EXPECT_GT(got->passes, 0);
        }
      }
    }
  }
  GenerateRequest tree = Request(kPrompts[0], 0, "ngram", "tree");
  tree.speculative.verify_at_last_hop = true;
  EXPECT_EQ(client->Generate(tree, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SpeculativeSwarmTest, FailoverInTheMiddleOfSpeculationKeepsTheTokens) {
  auto client = Connect();
  // Pipelined and tree runs lose the node serving layer 12; runs verified at the last hop lose
  // the node that verifies them (layer 29).
  struct Case {
    const char* mode;
    bool last_hop;
    int layer;
  };
  for (const Case& c :
       {Case{"pipelined", false, 12}, Case{"tree", false, 12}, Case{"pipelined", true, 29}}) {
    const char* mode = c.mode;
    SCOPED_TRACE(::testing::Message() << mode << " last hop " << c.last_hop);
    GenerateRequest r = Request(kPrompts[3], 0, "ngram", mode);
    r.max_tokens = 48;
    r.speculative.verify_at_last_hop = c.last_hop;
    const auto want = Local(r);
    auto chain = client->OpenChain();
    ASSERT_TRUE(chain.ok()) << chain.status();
    client::LocalModelOptions lo;
    lo.path = testkit::DefaultModelPath();
    lo.threads = 1;
    auto lm = client::LocalModel::Load(lo);
    client::RequestContext ctx{&(*lm)->embedder(),
                               &(*lm)->head(),
                               &(*lm)->tokenizer(),
                               &(*lm)->pool(),
                               testkit::DefaultModelPath(),
                               1};
    // After a few tokens, kill the node serving the layer on the route in use; the other
    // replica route takes over and speculation restarts from the committed text.
    int killed = -1, tokens = 0;
    auto got = client::RunRequest(r, ctx, {chain->get()}, [&](int32_t, std::string_view) {
      if (++tokens == 6) {
        for (const client::HopInfo& h : (*chain)->Hops()) {
          if (h.first_layer <= c.layer && c.layer < h.last_layer) {
            for (size_t i = 0; i < swarm_->nodes().size(); ++i) {
              if (swarm_->nodes()[i]->id == h.node_id) killed = static_cast<int>(i);
            }
          }
        }
        if (killed >= 0) swarm_->KillNode(killed);
      }
      return true;
    });
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->token_ids, want);
    ASSERT_GE(killed, 0);
    // The layer is served by another node now.
    for (const client::HopInfo& h : (*chain)->Hops()) {
      if (h.first_layer <= c.layer && c.layer < h.last_layer) {
        EXPECT_NE(h.node_id, swarm_->nodes()[killed]->id);
      }
    }
    ASSERT_TRUE(swarm_->RestartNode(killed).ok());
    ASSERT_TRUE(swarm_->WaitUntilServing(5).ok());
  }
}

}  // namespace
}  // namespace strata
