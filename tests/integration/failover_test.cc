// No session lost: a generation survives node failures, departures and coordinator loss with
// exactly the tokens of an uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>

#include <functional>
#include <set>
#include <thread>

#include "client/local_model.h"
#include "client/prompt.h"
#include "model/sampling.h"
#include "strata/client.h"
#include "tests/testing/paths.h"
#include "tests/testing/swarm.h"

namespace strata {
namespace {

using testkit::LocalSwarm;
using testkit::NodeSpec;

// Greedy continuation of `prompt` for `steps` tokens, one Feed per token; `hook(step)` runs
// before each step (step 0 = before the prompt).
absl::StatusOr<std::vector<int32_t>> Decode(Session& s,
                                            const std::vector<int32_t>& prompt,
                                            int steps,
                                            const std::function<void(int)>& hook) {
  std::vector<int32_t> out;
  hook(0);
  auto logits = s.Feed(prompt);
  if (!logits.ok()) return logits.status();
  for (int i = 1; i <= steps; ++i) {
    const int32_t t = model::Argmax(*logits);
    out.push_back(t);
    hook(i);
    const int32_t next[1] = {t};
    logits = s.Feed(next);
    if (!logits.ok()) return logits.status();
  }
  return out;
}

std::vector<int32_t> Prompt(const std::string& text) {
  static client::LocalModel* local = [] {
    client::LocalModelOptions o;
    o.path = testkit::DefaultModelPath();
    o.threads = 2;
    return client::LocalModel::Load(o)->release();
  }();
  GenerateRequest r;
  r.prompt = text;
  r.chat = true;
  return *client::PromptTokens(local->tokenizer(), r);
}

// The uninterrupted reference, computed in this process.
std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, int steps) {
  client::LocalModelOptions o;
  o.path = testkit::DefaultModelPath();
  o.threads = 2;
  auto local = client::LocalModel::Load(o);
  auto session = (*local)->NewSession();
  std::vector<int32_t> out;
  auto logits = (*session)->Feed(prompt);
  for (int i = 0; i < steps; ++i) {
    out.push_back(model::Argmax(*logits));
    const int32_t next[1] = {out.back()};
    logits = (*session)->Feed(next);
  }
  return out;
}

std::unique_ptr<Client> Connect(const std::vector<std::string>& coordinators,
                                int open_timeout_ms = 5000) {
  ClientOptions o;
  o.coordinators = coordinators;
  o.model_path = testkit::DefaultModelPath();
  o.threads = 1;
  o.step_timeout_ms = 20000;
  o.open_timeout_ms = open_timeout_ms;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

std::unique_ptr<LocalSwarm> Swarm(const std::vector<std::string>& spans, bool links = false) {
  auto swarm = testkit::StartSwarm(links);
  for (const std::string& layers : spans) {
    NodeSpec spec;
    spec.layers = layers;
    auto node = swarm->AddNode(spec);
    EXPECT_TRUE(node.ok()) << node.status();
  }
  EXPECT_TRUE(swarm->WaitUntilServing(static_cast<int>(spans.size())).ok());
  return swarm;
}

// The index of the swarm node serving the hop that covers `layer` in `route`.
int NodeOnRoute(LocalSwarm& swarm, const std::vector<RouteHop>& route, int layer) {
  for (const RouteHop& h : route) {
    if (h.first_layer <= layer && layer < h.last_layer) {
      for (size_t i = 0; i < swarm.nodes().size(); ++i) {
        if (swarm.nodes()[i]->id == h.node_id) return static_cast<int>(i);
      }
    }
  }
  return -1;
}

class FailoverTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(testkit::DefaultModelPresent()); }
};

constexpr int kSteps = 40;

TEST_F(FailoverTest, KillMidDecodeKeepsTheTokens) {
  auto swarm = Swarm({"0:10", "10:20", "10:20", "20:30"});
  const auto prompt = Prompt("Tell me about the moon.");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int victim = NodeOnRoute(*swarm, (*session)->route(), 15);
  ASSERT_GE(victim, 0);
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 12) swarm->KillNode(victim);
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_NE(NodeOnRoute(*swarm, (*session)->route(), 15), victim);
}

TEST_F(FailoverTest, KillOfTheFirstHopAndOfTheLastHop) {
  auto swarm = Swarm({"0:10", "0:10", "10:20", "20:30", "20:30"});
  const auto prompt = Prompt("Name three rivers.");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int first = NodeOnRoute(*swarm, (*session)->route(), 0);
  const int last = NodeOnRoute(*swarm, (*session)->route(), 29);
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 8) swarm->KillNode(first);
    if (step == 20) swarm->KillNode(last);
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

TEST_F(FailoverTest, KillDuringThePromptPhase) {
  auto swarm = Swarm({"0:10", "10:20", "10:20", "20:30"});
  // A long prompt, so that the prefill is still running when the node dies.
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox jumps over the lazy dog. ";
  const auto prompt = Prompt(text);
  const auto want = Reference(prompt, 16);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int victim = NodeOnRoute(*swarm, (*session)->route(), 15);
  std::thread killer;
  auto got = Decode(**session, prompt, 16, [&](int step) {
    if (step == 0) {
      killer = std::thread([&] {
        absl::SleepFor(absl::Milliseconds(30));  // inside the prefill of ~400 tokens
        swarm->KillNode(victim);
      });
    }
  });
  killer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

std::set<int> Boundaries(const std::vector<RouteHop>& route) {
  std::set<int> b;
  for (const RouteHop& h : route) b.insert(h.first_layer);
  return b;
}

TEST_F(FailoverTest, ReplacementWithDifferentSpanBoundaries) {
  auto swarm = Swarm({"0:10", "10:20", "20:30"});
  const auto prompt = Prompt("Why do leaves change color?");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_EQ(Boundaries((*session)->route()), (std::set<int>{0, 10, 20}));
  // Replacements whose spans are cut elsewhere: layers 5-24 and 25-29.
  for (const char* layers : {"5:25", "25:30"}) {
    NodeSpec spec;
    spec.layers = layers;
    ASSERT_TRUE(swarm->AddNode(spec).ok());
  }
  ASSERT_TRUE(swarm->WaitUntilServing(5).ok());
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 10) {
      swarm->KillNode(1);
      swarm->KillNode(2);
    }
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_EQ(Boundaries((*session)->route()), (std::set<int>{0, 10, 25}));
}

// A session's first op follows the opens at once: opening costs no round trip, and the tokens
// are the same.
TEST_F(FailoverTest, TheFirstOpDoesNotWaitForTheOpens) {
  auto swarm = Swarm({"0:10", "10:20", "20:30"}, /*links=*/true);
  ASSERT_TRUE(swarm->SetDelay(300).ok());
  const auto prompt = Prompt("Name a planet.");
  const auto want = Reference(prompt, 4);
  auto client = Connect(swarm->coordinators(), /*open_timeout_ms=*/15000);
  {
    // Connects the client to every node (a connection's setup crosses the links).
    auto warm = client->OpenSession();
    ASSERT_TRUE(warm.ok()) << warm.status();
    ASSERT_TRUE(Decode(**warm, prompt, 1, [](int) {}).ok());
  }
  const absl::Time start = absl::Now();
  auto session = client->OpenSession();
  const absl::Duration open = absl::Now() - start;
  ASSERT_TRUE(session.ok()) << session.status();
  // Waiting for the opens' answers would take a round trip through a link: 600 ms.
  EXPECT_LT(open, absl::Milliseconds(300));
  auto got = Decode(**session, prompt, 4, [](int) {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

// A node that refuses the session (here: it is full) is routed around, as before the first op
// was sent without waiting; where no route has room, the refusal comes back as a clear error.
TEST_F(FailoverTest, AHopThatRefusesTheSessionIsRoutedAround) {
  auto swarm = testkit::StartSwarm();
  NodeSpec full;
  full.layers = "10:20";
  full.extra_args = {"--max-sessions", "1"};
  for (const NodeSpec& spec : {NodeSpec{.layers = "0:10"}, full, NodeSpec{.layers = "20:30"}}) {
    ASSERT_TRUE(swarm->AddNode(spec).ok());
  }
  ASSERT_TRUE(swarm->WaitUntilServing(3).ok());
  const auto prompt = Prompt("Name a river.");
  const auto want = Reference(prompt, 4);
  auto client = Connect(swarm->coordinators());
  auto first = client->OpenSession();  // takes the full node's only place
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(Decode(**first, prompt, 1, [](int) {}).ok());

  auto second = client->OpenSession();
  ASSERT_TRUE(second.ok()) << second.status();  // opens are answered later
  auto refused = Decode(**second, prompt, 1, [](int) {});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("refused the session"), std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("limit of 1 sessions"), std::string::npos)
      << refused.status();

  NodeSpec other;
  other.layers = "10:20";
  ASSERT_TRUE(swarm->AddNode(other).ok());
  ASSERT_TRUE(swarm->WaitUntilServing(4).ok());
  auto third = client->OpenSession();
  ASSERT_TRUE(third.ok()) << third.status();
  auto got = Decode(**third, prompt, 4, [](int) {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  // The full node was not reported as failed: the first session still runs through it.
  auto more = Decode(**first, prompt, 2, [](int) {});
  EXPECT_TRUE(more.ok()) << more.status();
}

TEST_F(FailoverTest, FailureDuringTheReplay) {
  auto swarm = Swarm({"0:10", "10:20", "10:20", "20:30"}, /*links=*/true);
  const auto prompt = Prompt("Describe a thunderstorm.");
  const auto want = Reference(prompt, kSteps);
  // Opens through a 2.5 s link still succeed; a step through it misses its deadline.
  auto client = Connect(swarm->coordinators(), /*open_timeout_ms=*/15000);
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int victim = NodeOnRoute(*swarm, (*session)->route(), 15);
  std::thread rescue;
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step != 10) return;
    // The only other replica of layers 10-19 becomes far too slow: it accepts the session, but
    // the replay through it misses its deadline, so the client must fail over again — to a
    // fresh replica that arrives meanwhile.
    for (size_t i = 0; i < swarm->nodes().size(); ++i) {
      auto& n = *swarm->nodes()[i];
      if (n.first_layer == 10 && static_cast<int>(i) != victim) {
        ASSERT_TRUE(n.link->Command("delay 0 2500").ok());
      }
    }
    swarm->KillNode(victim);
    rescue = std::thread([&] {
      NodeSpec spec;
      spec.layers = "10:20";
      EXPECT_TRUE(swarm->AddNode(spec).ok());
    });
  });
  rescue.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_EQ(NodeOnRoute(*swarm, (*session)->route(), 15),
            static_cast<int>(swarm->nodes().size()) - 1);
}

TEST_F(FailoverTest, GracefulLeaveMovesSessionsWithoutLoss) {
  auto swarm = Swarm({"0:10", "10:20", "10:20", "20:30"});
  const auto prompt = Prompt("Give me a recipe for pancakes.");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int leaving = NodeOnRoute(*swarm, (*session)->route(), 15);
  std::thread stopper;
  absl::Status stopped;
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 10) stopper = std::thread([&] { stopped = swarm->StopNode(leaving); });
  });
  stopper.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_TRUE(stopped.ok()) << stopped;  // it left once the session had moved
  EXPECT_NE(NodeOnRoute(*swarm, (*session)->route(), 15), leaving);
}

TEST_F(FailoverTest, PartitionAndBlackHoleAreRoutedAround) {
  auto swarm = Swarm({"0:10", "10:20", "10:20", "10:20", "20:30"}, /*links=*/true);
  const auto prompt = Prompt("What is a prime number?");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    const int current = NodeOnRoute(*swarm, (*session)->route(), 15);
    if (step == 8) {
      ASSERT_TRUE(swarm->nodes()[current]->link->Command("cut 0").ok());
    }
    if (step == 20) {
      ASSERT_TRUE(swarm->nodes()[current]->link->Command("blackhole 0").ok());
    }
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

TEST_F(FailoverTest, SessionsOutliveTheCoordinator) {
  auto swarm = Swarm({"0:15", "15:30"});
  const auto prompt = Prompt("Explain photosynthesis briefly.");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 5) swarm->KillCoordinator(0);
    if (step == 30) {
      ASSERT_TRUE(swarm->RestartCoordinator(0).ok());
    }
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  // The restarted coordinator rebuilds membership from heartbeats within two TTLs.
  EXPECT_TRUE(swarm->WaitUntilServing(2, absl::Milliseconds(2 * swarm->options().ttl_ms)).ok());
  auto fresh = client->OpenSession();
  EXPECT_TRUE(fresh.ok()) << fresh.status();
}

TEST_F(FailoverTest, LosingOneOfTwoCoordinatorsIsInvisible) {
  auto swarm = testkit::StartSwarm();
  ASSERT_TRUE(swarm->AddCoordinator().ok());
  for (const char* layers : {"0:15", "15:30", "15:30"}) {
    NodeSpec spec;
    spec.layers = layers;
    ASSERT_TRUE(swarm->AddNode(spec).ok());
  }
  ASSERT_TRUE(swarm->WaitUntilServing(3).ok());
  const auto prompt = Prompt("What makes a good friend?");
  const auto want = Reference(prompt, kSteps);
  auto client = Connect(swarm->coordinators());
  swarm->KillCoordinator(0);
  // New sessions and a failover both need a coordinator: the second one answers.
  auto session = client->OpenSession();
  ASSERT_TRUE(session.ok()) << session.status();
  const int victim = NodeOnRoute(*swarm, (*session)->route(), 20);
  auto got = Decode(**session, prompt, kSteps, [&](int step) {
    if (step == 10) swarm->KillNode(victim);
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
}

TEST_F(FailoverTest, NoRouteIsAClearErrorNamingTheLayers) {
  auto swarm = Swarm({"0:15", "15:30"});
  ClientOptions o;
  o.coordinators = swarm->coordinators();
  o.model_path = testkit::DefaultModelPath();
  o.threads = 1;
  auto client = Client::Connect(o);
  ASSERT_TRUE(client.ok());
  auto session = (*client)->OpenSession();
  ASSERT_TRUE(session.ok());
  const auto prompt = Prompt("Hello.");
  swarm->KillNode(1);
  const absl::Time start = absl::Now();
  auto got = Decode(**session, prompt, 4, [](int) {});
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("15-29"), std::string::npos) << got.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));  // bounded, never a hang
}

}  // namespace
}  // namespace strata
