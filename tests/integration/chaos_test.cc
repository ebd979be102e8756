// Chaos: 12 concurrent sessions generate 96 tokens each on a 5-node swarm with redundant
// coverage while a killer kill -9s a random node every few seconds and restarts it. Every session
// must finish with exactly the tokens of an uninterrupted run.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "absl/time/clock.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "model/sampling.h"
#include "strata/client.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "tests/testing/paths.h"
#include "tests/testing/swarm.h"

namespace strata {
namespace {

constexpr int kSessions = 12;
constexpr int kTokens = 96;

TEST(ChaosTest, SessionsSurviveRandomKillsWithIdenticalTokens) {
  ASSERT_TRUE(testkit::DefaultModelPresent());
  // Every layer is served at least twice, so one dead node never leaves a gap; no node serves
  // everything, so every route has several hops.
  auto swarm = testkit::StartSwarm();
  for (const char* layers : {"0:15", "0:15", "15:30", "15:30", "5:25"}) {
    testkit::NodeSpec spec;
    spec.layers = layers;
    ASSERT_TRUE(swarm->AddNode(spec).ok());
  }
  ASSERT_TRUE(swarm->WaitUntilServing(5).ok());

  const char* topics[] = {"rivers",
                          "volcanoes",
                          "bees",
                          "the moon",
                          "chess",
                          "bread",
                          "trains",
                          "glaciers",
                          "owls",
                          "copper",
                          "tides",
                          "maps"};
  client::LocalModelOptions lo;
  lo.path = testkit::DefaultModelPath();
  lo.threads = 2;
  auto local = client::LocalModel::Load(lo);
  ASSERT_TRUE(local.ok());
  std::vector<std::vector<int32_t>> prompts, want;
  for (const char* topic : topics) {
    GenerateRequest r;
    r.prompt = std::string("Write a paragraph about ") + topic + ".";
    r.chat = true;
    prompts.push_back(*client::PromptTokens((*local)->tokenizer(), r));
    auto s = (*local)->NewSession();
    std::vector<int32_t> out;
    auto logits = (*s)->Feed(prompts.back());
    for (int i = 0; i < kTokens; ++i) {
      out.push_back(model::Argmax(*logits));
      const int32_t t[1] = {out.back()};
      logits = (*s)->Feed(t);
    }
    want.push_back(out);
  }

  std::atomic<int> running{kSessions};
  std::vector<std::vector<int32_t>> got(kSessions);
  std::vector<absl::Status> status(kSessions);
  std::vector<std::thread> sessions;
  for (int i = 0; i < kSessions; ++i) {
    sessions.emplace_back([&, i] {
      ClientOptions o;
      o.coordinators = swarm->coordinators();
      o.model_path = testkit::DefaultModelPath();
      o.threads = 1;
      o.step_timeout_ms = 30000;
      auto client = Client::Connect(o);
      if (!client.ok()) {
        status[i] = client.status();
      } else if (auto session = (*client)->OpenSession(); !session.ok()) {
        status[i] = session.status();
      } else {
        auto logits = (*session)->Feed(prompts[i]);
        for (int k = 0; k < kTokens && logits.ok(); ++k) {
          got[i].push_back(model::Argmax(*logits));
          const int32_t t[1] = {got[i].back()};
          logits = (*session)->Feed(t);
          // Paced, so that the sessions outlast several kills however fast the machine is.
          absl::SleepFor(absl::Milliseconds(60));
        }
        status[i] = logits.status();
      }
      running--;
    });
  }
  // The killer: every ~2 s a random node that serves sessions (as its heartbeats say) dies at
  // once (kill -9) and comes back ~1 s later.
  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(swarm->coordinator(), grpc::InsecureChannelCredentials()));
  auto busy_nodes = [&] {
    v1::SwarmSnapshot snap;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    std::vector<int> busy;
    if (!stub->GetSwarm(&ctx, v1::SwarmRequest(), &snap).ok()) return busy;
    for (int i = 0; i < static_cast<int>(swarm->nodes().size()); ++i) {
      for (const auto& n : snap.nodes()) {
        if (n.node().node_id() == swarm->nodes()[i]->id && n.load().active_sessions() > 0) {
          busy.push_back(i);
        }
      }
    }
    return busy;
  };
  std::mt19937 rng(20261126);
  int kills = 0;
  const absl::Time give_up = absl::Now() + absl::Minutes(4);
  while (running > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1000));
    if (running == 0) break;
    const std::vector<int> busy = busy_nodes();
    const int victim =
        busy.empty() ? static_cast<int>(rng() % swarm->nodes().size()) : busy[rng() % busy.size()];
    swarm->KillNode(victim);
    ++kills;
    absl::SleepFor(absl::Milliseconds(1000));
    ASSERT_TRUE(swarm->RestartNode(victim).ok());
  }
  for (auto& t : sessions) t.join();
  EXPECT_GE(kills, 3) << "the sessions finished before the killer could act";
  // Clients reported the nodes that failed them: the kills did hit routes in use.
  v1::SwarmSnapshot snap;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->GetSwarm(&ctx, v1::SwarmRequest(), &snap).ok());
  int failures = 0;
  for (const auto& e : snap.events()) failures += e.kind() == "failure";
  EXPECT_GT(failures, 0);
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_TRUE(status[i].ok()) << "session " << i << ": " << status[i];
    EXPECT_EQ(got[i], want[i]) << "session " << i;
  }
}

}  // namespace
}  // namespace strata
