// The swarm end to end: real `strata coordinator` and `strata node` processes on loopback, the
// client SDK in this process. Outputs are compared with local single-process generation by
// equality (DESIGN.md, Determinism).
#include "tests/testing/swarm.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "client/generate.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "strata/client.h"
#include "strata/v1/node.grpc.pb.h"
#include "tests/testing/paths.h"

namespace strata {
namespace {

using testkit::LocalSwarm;
using testkit::NodeSpec;

const std::vector<std::string> kPrompts = {
    "What is the boiling point of water at sea level?",
    "Write a haiku about the ocean.",
    "List three uses of copper.",
    "Explain recursion to a child.",
};

constexpr int kTokens = 24;

GenerateRequest Request(const std::string& prompt, float temperature, uint64_t seed) {
  GenerateRequest r;
  r.prompt = prompt;
  r.chat = true;
  r.max_tokens = kTokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  return r;
}

// Local single-process reference.
class Local {
 public:
  Local() {
    client::LocalModelOptions o;
    o.path = testkit::DefaultModelPath();
    o.threads = 2;
    auto lm = client::LocalModel::Load(o);
    EXPECT_TRUE(lm.ok()) << lm.status();
    lm_ = std::move(*lm);
  }
  std::vector<int32_t> Generate(const GenerateRequest& r) {
    auto prompt = client::PromptTokens(lm_->tokenizer(), r);
    auto session = lm_->NewSession();
    auto g = client::Generate(**session, lm_->tokenizer(), *prompt, client::ToGenerateOptions(r));
    EXPECT_TRUE(g.ok()) << g.status();
    return g->tokens;
  }
  std::vector<float> Logits(const std::vector<int32_t>& tokens) {
    auto session = lm_->NewSession();
    auto l = (*session)->Feed(tokens);
    EXPECT_TRUE(l.ok());
    return std::vector<float>(l->begin(), l->end());
  }
  const text::Tokenizer& tokenizer() { return lm_->tokenizer(); }

 private:
  std::unique_ptr<client::LocalModel> lm_;
};

Local& Reference() {
  static Local* local = new Local();
  return *local;
}

std::unique_ptr<Client> Connect(const LocalSwarm& swarm) {
  ClientOptions o;
  o.coordinators = {swarm.coordinator()};
  o.model_path = testkit::DefaultModelPath();
  o.threads = 1;
  o.step_timeout_ms = 30000;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

std::unique_ptr<LocalSwarm> StartSwarm(const std::vector<std::string>& spans) {
  auto swarm = testkit::StartSwarm();
  for (const std::string& layers : spans) {
    NodeSpec spec;
    spec.layers = layers;
    auto node = swarm->AddNode(spec);
    EXPECT_TRUE(node.ok()) << node.status();
  }
  absl::Status st = swarm->WaitUntilServing(static_cast<int>(spans.size()));
  EXPECT_TRUE(st.ok()) << st;
  return swarm;
}

class SwarmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
  }
};

TEST_F(SwarmTest, ThreeNodesMatchLocalTokensAndLogits) {
  auto swarm = StartSwarm({"0:10", "10:20", "20:30"});
  auto client = Connect(*swarm);
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    SCOPED_TRACE(kPrompts[i]);
    for (float temperature : {0.0f, 0.8f}) {
      GenerateRequest req = Request(kPrompts[i], temperature, 1234 + i);
      auto got = client->Generate(req);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->token_ids, Reference().Generate(req)) << "temperature " << temperature;
      ASSERT_EQ(got->route.size(), 3u);
      EXPECT_EQ(got->route[0].first_layer, 0);
      EXPECT_EQ(got->route[2].last_layer, 30);
    }
  }
  // A request returns once its last token is known and its sessions end behind it, while the
  // client lives on: every node is left with none open.
  auto open_sessions = [&] {
    int open = 0;
    for (const auto& node : swarm->nodes()) {
      auto stub =
          v1::Node::NewStub(grpc::CreateChannel(node->address, grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::NodeInfo info;
      if (!stub->Info(&ctx, v1::InfoRequest(), &info).ok()) return -1;
      open += info.active_sessions();
    }
    return open;
  };
  int open = -1;
  for (int i = 0; i < 100 && open != 0; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(50));
    open = open_sessions();
  }
  EXPECT_EQ(open, 0) << "sessions of finished requests are still open";
  // Logits bit for bit, through the research-facing Session API.
  auto prompt = client->Tokenize(Request(kPrompts[0], 0, 0));
  ASSERT_TRUE(prompt.ok());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  auto logits = (*session)->Feed(*prompt);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<float> local = Reference().Logits(*prompt);
  ASSERT_EQ(logits->size(), local.size());
  EXPECT_EQ(std::memcmp(logits->data(), local.data(), local.size() * sizeof(float)), 0);
  EXPECT_EQ((*session)->hidden().size(), static_cast<size_t>(client->hidden_size()));
}

TEST_F(SwarmTest, SplitsOverOneTwoThreeAndFiveNodesAgree) {
  const GenerateRequest greedy = Request(kPrompts[1], 0.0f, 0);
  const GenerateRequest sampled = Request(kPrompts[3], 0.9f, 77);
  const std::vector<int32_t> want_greedy = Reference().Generate(greedy);
  const std::vector<int32_t> want_sampled = Reference().Generate(sampled);
  for (const std::vector<std::string>& spans :
       std::vector<std::vector<std::string>>{{"0:30"},
                                             {"0:15", "15:30"},
                                             {"0:10", "10:20", "20:30"},
                                             {"0:6", "6:12", "12:18", "18:24", "24:30"}}) {
    SCOPED_TRACE(spans.size());
    auto swarm = StartSwarm(spans);
    auto client = Connect(*swarm);
    auto a = client->Generate(greedy);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->token_ids, want_greedy);
    EXPECT_EQ(a->route.size(), spans.size());
    auto b = client->Generate(sampled);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->token_ids, want_sampled);
  }
}

TEST_F(SwarmTest, SixteenConcurrentSessionsAreAllCorrect) {
  auto swarm = StartSwarm({"0:10", "10:20", "20:30"});
  constexpr int kSessions = 16;
  std::vector<GenerateRequest> requests;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < kSessions; ++i) {
    requests.push_back(Request(kPrompts[i % kPrompts.size()], i % 2 ? 0.8f : 0.0f, 100 + i));
    want.push_back(Reference().Generate(requests.back()));
  }
  std::vector<std::vector<int32_t>> got(kSessions);
  std::vector<absl::Status> status(kSessions);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      auto client = Connect(*swarm);
      auto r = client->Generate(requests[i]);
      status[i] = r.status();
      if (r.ok()) got[i] = r->token_ids;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_TRUE(status[i].ok()) << i << ": " << status[i];
    EXPECT_EQ(got[i], want[i]) << "session " << i;
  }
}

TEST_F(SwarmTest, LateJoinerFillsTheGapThenTheWeakestLayers) {
  auto swarm = testkit::StartSwarm();
  ASSERT_NE(swarm, nullptr);
  NodeSpec first;
  first.layers = "0:20";
  ASSERT_TRUE(swarm->AddNode(first).ok());
  NodeSpec late;
  late.max_layers = 10;
  auto gap = swarm->AddNode(late);
  ASSERT_TRUE(gap.ok()) << gap.status();
  EXPECT_EQ((*gap)->first_layer, 20);
  EXPECT_EQ((*gap)->last_layer, 30);
  ASSERT_TRUE(swarm->WaitUntilServing(2).ok());
  // Every layer is now served once; a node of 20 layers is slower per layer than one of 10, so
  // the weakest window for another 10-layer node lies inside [0, 20).
  auto third = swarm->AddNode(late);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_LE((*third)->last_layer, 20);
  EXPECT_EQ((*third)->last_layer - (*third)->first_layer, 10);
}

}  // namespace
}  // namespace strata
