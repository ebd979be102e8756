// The hand-off negotiation and its gRPC fallback, with a fake transport on a three-hop route of
// the default model in this process: whatever happens to the link (declined, no provider, a failed
// connect, a send or a receive failing mid-session), the session's tokens equal a plain route's.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <set>

#include "tests/node/fake_handoff.h"
#include "tests/node/handoff_testing.h"

namespace strata {
namespace {

using testing::FakeFaults;
using testing::FakeHandoff;
using testing::FakeHub;
using ::testing::HasSubstr;

constexpr int kSteps = 10;

struct Route {
  std::vector<std::unique_ptr<node::NodeServer>> owned;
  std::vector<node::NodeServer*> nodes;
  std::vector<std::shared_ptr<FakeHandoff>> fakes;  // per node, null without one
};

// Three hops over layers 0-9, 10-19, 20-29; node i uses faults[i] (nullopt: no provider, NCCL
// off).
Route StartRoute(const std::shared_ptr<FakeHub>& hub,
                 const std::vector<std::optional<FakeFaults>>& faults) {
  Route r;
  const int spans[3][2] = {{0, 10}, {10, 20}, {20, 30}};
  for (int i = 0; i < 3; ++i) {
    node::NodeOptions o;
    o.node_id = StrCat("hop-", i);
    o.nccl = false;
    std::shared_ptr<FakeHandoff> fake;
    if (faults[i]) {
      fake = std::make_shared<FakeHandoff>(hub, *faults[i]);
      o.handoff = fake;
    }
    r.owned.push_back(testing::StartSpanNode(o, spans[i][0], spans[i][1]));
    r.nodes.push_back(r.owned.back().get());
    r.fakes.push_back(fake);
  }
  return r;
}

class HandoffTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testing::DefaultModelPresent()) << "run the setup step to install the model";
    ASSERT_NE(testing::SharedClientModel(), nullptr);
    auto hub = std::make_shared<FakeHub>();
    Route plain = StartRoute(hub, {std::nullopt, std::nullopt, std::nullopt});
    for (node::NodeServer* n : plain.nodes) ASSERT_NE(n, nullptr);
    auto tokens = testing::GreedyOverRoute(plain.nodes, testing::TestPrompt(), kSteps);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    reference_ = new std::vector<int32_t>(*tokens);
  }

  // Runs the route, returning the tokens; each hop's link (hops 0 and 1) is recorded after the
  // prompt and after the last step.
  std::vector<int32_t> Run(Route& r, std::vector<v1::DownstreamLinkInfo>* after_prompt,
                           std::vector<v1::DownstreamLinkInfo>* at_end) {
    for (node::NodeServer* n : r.nodes) EXPECT_NE(n, nullptr);
    if (::testing::Test::HasFailure()) return {};
    auto settle = [&](std::vector<v1::DownstreamLinkInfo>* out) {
      out->clear();
      for (int i = 0; i < 2; ++i) out->push_back(testing::SettledLink(*r.nodes[i]));
    };
    int failovers = -1;
    auto tokens = testing::GreedyOverRoute(
        r.nodes, testing::TestPrompt(), kSteps, [&] { settle(after_prompt); },
        [&] { settle(at_end); }, &failovers);
    EXPECT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(failovers, 0) << "the client had to rebuild the route";
    if (at_end->size() != 2) at_end->resize(2);
    if (after_prompt->size() != 2) after_prompt->resize(2);
    // The session is closed: its push streams are gone from the board.
    for (int i = 0; i < 2; ++i) {
      const absl::Time deadline = absl::Now() + absl::Seconds(10);
      while (!r.nodes[i]->links().empty() && absl::Now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_TRUE(r.nodes[i]->links().empty()) << "hop " << i;
    }
    return tokens.ok() ? *tokens : std::vector<int32_t>();
  }

  static std::vector<int32_t>* reference_;
};

std::vector<int32_t>* HandoffTest::reference_ = nullptr;

TEST_F(HandoffTest, ReferenceIsNonTrivial) {
  ASSERT_EQ(reference_->size(), static_cast<size_t>(kSteps));
  // Not one token repeated: a broken route would more likely give that.
  EXPECT_GT(std::set<int32_t>(reference_->begin(), reference_->end()).size(), 1u);
}

TEST_F(HandoffTest, LinkCarriesPayloadsAndTokensMatch) {
  auto hub = std::make_shared<FakeHub>();
  Route r = StartRoute(hub, {FakeFaults{}, FakeFaults{}, FakeFaults{}});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(prompt[i].transport(), "fake") << "hop " << i << ": " << prompt[i].reason();
    EXPECT_EQ(end[i].transport(), "fake") << "hop " << i << ": " << end[i].reason();
    // The rest of the prompt and every decode step went over it.
    EXPECT_EQ(end[i].link_payloads(), kSteps + 1) << "hop " << i;
    EXPECT_EQ(r.fakes[i]->sends(), end[i].link_payloads());
    EXPECT_EQ(r.fakes[i + 1]->recvs(), r.fakes[i]->sends());
  }
}

TEST_F(HandoffTest, OfferFromAnotherHostIsDeclined) {
  auto hub = std::make_shared<FakeHub>();
  FakeFaults other;
  other.host = "host-b";
  Route r = StartRoute(hub, {FakeFaults{}, other, FakeFaults{}});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  // hop 0 (host-a) -> hop 1 (host-b): declined; hop 1 -> hop 2 (host-a): declined too.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(end[i].transport(), "grpc");
    EXPECT_THAT(end[i].reason(), HasSubstr("declined"));
    EXPECT_THAT(end[i].reason(), HasSubstr("another host"));
    EXPECT_EQ(end[i].link_payloads(), 0);
  }
  EXPECT_EQ(r.fakes[0]->sends() + r.fakes[1]->sends(), 0);
}

TEST_F(HandoffTest, NodeWithoutTransportDeclinesAndOffersNothing) {
  auto hub = std::make_shared<FakeHub>();
  Route r = StartRoute(hub, {FakeFaults{}, std::nullopt, FakeFaults{}});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  EXPECT_EQ(end[0].transport(), "grpc");
  EXPECT_THAT(end[0].reason(), HasSubstr("declined"));
  EXPECT_THAT(end[0].reason(), HasSubstr("--no-nccl"));
  // The middle hop has no provider: it offers nothing and says why.
  EXPECT_EQ(end[1].transport(), "grpc");
  EXPECT_THAT(end[1].reason(), HasSubstr("--no-nccl"));
}

TEST_F(HandoffTest, FailedConnectFallsBack) {
  auto hub = std::make_shared<FakeHub>();
  FakeFaults bad;
  bad.fail_connect = true;
  Route r = StartRoute(hub, {FakeFaults{}, bad, FakeFaults{}});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  EXPECT_EQ(end[0].transport(), "grpc");  // hop 1 failed to join hop 0's rendezvous
  EXPECT_THAT(end[0].reason(), HasSubstr("connect"));
  EXPECT_EQ(end[1].transport(), "grpc");  // hop 1 failed its own
  EXPECT_THAT(end[1].reason(), HasSubstr("injected connect failure"));
}

TEST_F(HandoffTest, SendFailureMidSessionLosesNothing) {
  auto hub = std::make_shared<FakeHub>();
  FakeFaults flaky;
  flaky.fail_send_after = 3;
  Route r = StartRoute(hub, {flaky, flaky, FakeFaults{}});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(prompt[i].transport(), "fake") << "hop " << i << ": " << prompt[i].reason();
    EXPECT_EQ(end[i].transport(), "grpc") << "hop " << i;
    EXPECT_THAT(end[i].reason(), HasSubstr("injected send failure"));
    EXPECT_EQ(end[i].link_payloads(), 3);
  }
}

TEST_F(HandoffTest, ReceiveFailureMidSessionLosesNothing) {
  auto hub = std::make_shared<FakeHub>();
  FakeFaults flaky;
  flaky.fail_recv_after = 2;
  Route r = StartRoute(hub, {FakeFaults{}, flaky, flaky});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  EXPECT_EQ(Run(r, &prompt, &end), *reference_);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(prompt[i].transport(), "fake") << "hop " << i << ": " << prompt[i].reason();
    // The sender learns of the failure from the next hop, or its own send of that payload
    // fails first (the broken link).
    EXPECT_EQ(end[i].transport(), "grpc") << "hop " << i;
    EXPECT_THAT(end[i].reason(), ::testing::AnyOf(HasSubstr("injected receive failure"),
                                                  HasSubstr("the fake link is broken")));
    EXPECT_EQ(r.fakes[i + 1]->recvs(), 2);
  }
}

}  // namespace
}  // namespace strata
