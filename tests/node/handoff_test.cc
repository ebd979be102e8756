// The hand-off negotiation and its gRPC fallback, with a fake transport on a three-hop route of
// the default model in this process: whatever happens to the link (declined, no provider, a failed
// connect, a send or a receive failing mid-session), the session's tokens equal a plain route's.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <set>

#include "strata/v1/node.grpc.pb.h"
#include "tests/node/fake_handoff.h"
#include "tests/node/handoff_testing.h"

namespace strata {
namespace {

using ::testing::HasSubstr;
using testkit::FakeFaults;
using testkit::FakeHandoff;
using testkit::FakeHub;

constexpr int kSteps = 10;

struct Route {
  std::vector<std::unique_ptr<node::NodeServer>> owned;
  std::vector<node::NodeServer*> nodes;
  std::vector<std::shared_ptr<FakeHandoff>> fakes;  // per node, null without one
};

// Three hops over layers 0-9, 10-19, 20-29; node i uses faults[i] (nullopt: no provider, NCCL
// off).
Route StartRoute(const std::shared_ptr<FakeHub>& hub,
                 const std::vector<std::optional<FakeFaults>>& faults,
                 std::vector<int> max_links = {8, 8, 8}) {
  Route r;
  const int spans[3][2] = {{0, 10}, {10, 20}, {20, 30}};
  for (int i = 0; i < 3; ++i) {
    node::NodeOptions o;
    o.node_id = StrCat("hop-", i);
    o.nccl = false;
    o.max_handoff_links = max_links[i];
    std::shared_ptr<FakeHandoff> fake;
    if (faults[i]) {
      fake = std::make_shared<FakeHandoff>(hub, *faults[i]);
      o.handoff = fake;
    }
    r.owned.push_back(testkit::StartSpanNode(o, spans[i][0], spans[i][1]));
    r.nodes.push_back(r.owned.back().get());
    r.fakes.push_back(fake);
  }
  return r;
}

class HandoffTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testkit::DefaultModelPresent()) << "run the setup step to install the model";
    ASSERT_NE(testkit::SharedClientModel(), nullptr);
    auto hub = std::make_shared<FakeHub>();
    Route plain = StartRoute(hub, {std::nullopt, std::nullopt, std::nullopt});
    for (node::NodeServer* n : plain.nodes) ASSERT_NE(n, nullptr);
    auto tokens = testkit::GreedyOverRoute(plain.nodes, testkit::TestPrompt(), kSteps);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    reference_ = new std::vector<int32_t>(*tokens);
  }

  // Runs the route, returning the tokens; each hop's link (hops 0 and 1) is recorded after the
  // prompt and after the last step.
  std::vector<int32_t> Run(Route& r,
                           std::vector<v1::DownstreamLinkInfo>* after_prompt,
                           std::vector<v1::DownstreamLinkInfo>* at_end) {
    for (node::NodeServer* n : r.nodes) EXPECT_NE(n, nullptr);
    if (::testing::Test::HasFailure()) return {};
    auto settle = [&](std::vector<v1::DownstreamLinkInfo>* out) {
      out->clear();
      for (int i = 0; i < 2; ++i) out->push_back(testkit::SettledLink(*r.nodes[i]));
    };
    int failovers = -1;
    auto tokens = testkit::GreedyOverRoute(
        r.nodes,
        testkit::TestPrompt(),
        kSteps,
        [&] { settle(after_prompt); },
        [&] { settle(at_end); },
        &failovers);
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
    EXPECT_THAT(end[i].reason(),
                ::testing::AnyOf(HasSubstr("injected receive failure"),
                                 HasSubstr("the fake link is broken")));
    EXPECT_EQ(r.fakes[i + 1]->recvs(), 2);
  }
}

TEST_F(HandoffTest, LinksBeyondTheNodesBudgetStayOnGrpc) {
  auto hub = std::make_shared<FakeHub>();
  // Hop 0 may hold one link; hop 1 two (one in, one out); hop 2 one.
  Route r = StartRoute(hub, {FakeFaults{}, FakeFaults{}, FakeFaults{}}, {1, 2, 1});
  std::vector<v1::DownstreamLinkInfo> prompt, end;
  // While the first session holds hop 0's only link, a second session's stream gets none.
  std::vector<int32_t> second;
  v1::DownstreamLinkInfo second_link;
  int failovers = -1;
  auto first = testkit::GreedyOverRoute(
      r.nodes,
      testkit::TestPrompt(),
      kSteps,
      [&] { prompt = {testkit::SettledLink(*r.nodes[0])}; },
      [&] {
        end = r.nodes[0]->links();
        auto t = testkit::GreedyOverRoute(r.nodes, testkit::TestPrompt(), kSteps, [&] {
          const absl::Time deadline = absl::Now() + absl::Seconds(10);
          while (second_link.reason().empty() && absl::Now() < deadline) {
            for (const v1::DownstreamLinkInfo& l : r.nodes[0]->links()) {
              if (l.reason().find("open already") != std::string::npos) second_link = l;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        });
        ASSERT_TRUE(t.ok()) << t.status();
        second = *t;
      },
      &failovers);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, *reference_);
  EXPECT_EQ(second, *reference_);
  EXPECT_EQ(failovers, 0);
  ASSERT_EQ(prompt.size(), 1u);
  EXPECT_EQ(prompt[0].transport(), "fake") << prompt[0].reason();
  EXPECT_THAT(second_link.reason(), HasSubstr("links are open already"));
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0].transport(), "fake");
  // Both sessions are closed: every link's share of the budget comes back, and a new session
  // links every hop again.
  for (node::NodeServer* n : r.nodes) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (n->handoff_links_open() > 0 && absl::Now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(n->handoff_links_open(), 0) << n->node_id();
  }
  std::vector<v1::DownstreamLinkInfo> again, again_end;
  EXPECT_EQ(Run(r, &again, &again_end), *reference_);
  EXPECT_EQ(again_end[0].transport(), "fake") << again_end[0].reason();
  EXPECT_EQ(again_end[1].transport(), "fake") << again_end[1].reason();
}

// Runs `runs` one-row forwards at positions 1..runs, all in flight at once, after a first row at
// position 0 (then `after_first`); returns every run's output row (`at_end` runs before the
// chain closes).
std::vector<float> PipelinedRuns(const std::vector<node::NodeServer*>& nodes,
                                 int runs,
                                 const std::function<void()>& after_first,
                                 const std::function<void()>& at_end,
                                 int* failovers) {
  const int width = testkit::SharedClientModel()->model().hparams().n_embd;
  auto chain = testkit::OpenRouteChain(nodes);
  EXPECT_TRUE(chain.ok()) << chain.status();
  if (!chain.ok()) return {};
  std::vector<float> in(static_cast<size_t>(width) * (runs + 1));
  for (size_t i = 0; i < in.size(); ++i) in[i] = 0.01f * static_cast<float>((i * 37) % 101) - 0.5f;
  const int32_t out_row[1] = {0};
  std::vector<float> out(static_cast<size_t>(width) * (runs + 1));
  const model::Row first[1] = {{0, 1, 0}};
  auto run0 = (*chain)->SubmitRun(first, in.data(), out_row);
  EXPECT_TRUE(run0.ok() && (*chain)->WaitRun(*run0, out.data()).ok());
  after_first();
  std::vector<uint64_t> ids;
  for (int i = 1; i <= runs; ++i) {
    const model::Row row[1] = {{i, 1, 0}};
    auto id = (*chain)->SubmitRun(row, in.data() + static_cast<size_t>(i) * width, out_row);
    EXPECT_TRUE(id.ok()) << id.status();
    if (id.ok()) ids.push_back(*id);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    const absl::Status st = (*chain)->WaitRun(ids[i], out.data() + (i + 1) * width);
    EXPECT_TRUE(st.ok()) << st;
  }
  at_end();
  *failovers = (*chain)->stats().failovers;
  return out;
}

// Several runs in flight when the link fails: every payload not confirmed yet is sent again,
// in order, and every run's output is the plain route's, bit for bit.
TEST_F(HandoffTest, PipelinedRunsSurviveAReceiveFailure) {
  constexpr int kRuns = 8;
  auto hub = std::make_shared<FakeHub>();
  int failovers = -1;
  std::vector<float> plain;
  {
    Route r = StartRoute(hub, {std::nullopt, std::nullopt, std::nullopt});
    plain = PipelinedRuns(
        r.nodes, kRuns, [] {}, [] {}, &failovers);
  }
  FakeFaults flaky;
  flaky.fail_recv_after = 3;
  Route r = StartRoute(hub, {FakeFaults{}, flaky, FakeFaults{}});
  v1::DownstreamLinkInfo before, after;
  std::vector<float> got = PipelinedRuns(
      r.nodes,
      kRuns,
      [&] {
        before = testkit::SettledLink(*r.nodes[0]);
        testkit::SettledLink(*r.nodes[1]);
      },
      [&] { after = testkit::SettledLink(*r.nodes[0]); },
      &failovers);
  ASSERT_EQ(got.size(), plain.size());
  EXPECT_TRUE(got == plain) << "outputs differ from the plain route's";
  EXPECT_EQ(failovers, 0);
  EXPECT_EQ(before.transport(), "fake") << before.reason();
  EXPECT_EQ(after.transport(), "grpc");
  EXPECT_EQ(r.fakes[1]->recvs(), 3);
  // Hop 1 -> hop 2 was not disturbed.
  EXPECT_EQ(r.fakes[2]->recvs(), kRuns);
}

// A previous hop that breaks the protocol gets refusals, its ops fail alone, and the node keeps
// serving.
TEST(HandoffInputTest, BadHandoffMessagesAreRefusedAndTheNodeKeepsServing) {
  auto hub = std::make_shared<FakeHub>();
  node::NodeOptions o;
  o.node_id = "target";
  o.handoff = std::make_shared<FakeHandoff>(hub, FakeFaults{});
  auto node = testkit::StartSpanNode(o, 0, 30);
  ASSERT_NE(node, nullptr);
  auto stub =
      v1::Node::NewStub(grpc::CreateChannel(node->address(), grpc::InsecureChannelCredentials()));
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);

  // A session whose ops come from a previous hop (this is hop 1, the last).
  grpc::ClientContext sctx;
  sctx.set_deadline(deadline);
  auto session = stub->Session(&sctx);
  v1::SessionRequest open;
  v1::OpenSession* os = open.mutable_open();
  os->set_protocol_version(v1::PROTOCOL_VERSION_1);
  os->set_session_id("bad-handoff");
  os->set_token("t");
  os->set_model_id(node->model().id());
  os->set_first_layer(0);
  os->set_last_layer(30);
  os->set_hop_index(1);
  os->set_max_length(64);
  ASSERT_TRUE(session->Write(open));
  v1::SessionResponse sr;
  ASSERT_TRUE(session->Read(&sr));
  ASSERT_TRUE(sr.has_opened()) << sr.DebugString();

  grpc::ClientContext pctx;
  pctx.set_deadline(deadline);
  auto push = stub->Push(&pctx);
  v1::PushRequest first;
  first.set_session_id("bad-handoff");
  first.set_token("t");
  ASSERT_TRUE(push->Write(first));
  auto answer = [&]() {
    v1::PushResponse r;
    EXPECT_TRUE(push->Read(&r));
    return r.handoff();
  };
  auto linked_forward = [](uint64_t seq, int rows) {
    v1::PushRequest m;
    m.mutable_op()->set_op_seq(seq);
    for (int i = 0; i < rows; ++i) {
      v1::RowMeta* row = m.mutable_op()->mutable_forward()->add_rows();
      row->set_pos(i);
      row->set_seqs(1);
    }
    m.set_hidden_on_link(true);
    return m;
  };

  // An offer of an unknown transport is declined.
  v1::PushRequest bogus;
  bogus.mutable_handoff_offer()->set_transport("bogus");
  bogus.mutable_handoff_offer()->set_rendezvous(std::string(100000, 'x'));
  ASSERT_TRUE(push->Write(bogus));
  v1::HandoffAnswer a = answer();
  EXPECT_EQ(a.state(), v1::HandoffAnswer::DECLINED);
  EXPECT_THAT(a.reason(), HasSubstr("not a fake offer"));

  // Payloads for nothing are ignored; a forward flagged as on a link that does not exist
  // reaches the worker without its rows and fails alone.
  v1::PushRequest stray;
  stray.mutable_late_payload()->set_op_seq(7);
  stray.set_handoff_closed("no link");
  ASSERT_TRUE(push->Write(stray));
  ASSERT_TRUE(push->Write(linked_forward(1, 1)));
  ASSERT_TRUE(session->Read(&sr));
  ASSERT_TRUE(sr.has_error()) << sr.DebugString();
  EXPECT_EQ(sr.error().op_seq(), 1u);
  EXPECT_EQ(sr.error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));

  // An accepted offer whose peer never joins; a linked forward before READY, with more rows
  // than a forward may have, ends the link and fails alone too.
  v1::PushRequest offer;
  offer.mutable_handoff_offer()->set_transport("fake");
  offer.mutable_handoff_offer()->set_host_id("host-a");
  offer.mutable_handoff_offer()->set_rendezvous(hub->NewRendezvous());
  ASSERT_TRUE(push->Write(offer));
  EXPECT_EQ(answer().state(), v1::HandoffAnswer::ACCEPTED);
  ASSERT_TRUE(push->Write(linked_forward(2, 9000)));
  a = answer();
  EXPECT_EQ(a.state(), v1::HandoffAnswer::FAILED);
  EXPECT_THAT(a.reason(), HasSubstr("rows"));
  ASSERT_TRUE(session->Read(&sr));
  ASSERT_TRUE(sr.has_error()) << sr.DebugString();
  EXPECT_EQ(sr.error().op_seq(), 2u);
  // A second offer on the stream is declined.
  offer.mutable_handoff_offer()->set_rendezvous(hub->NewRendezvous());
  ASSERT_TRUE(push->Write(offer));
  a = answer();
  EXPECT_EQ(a.state(), v1::HandoffAnswer::DECLINED);

  push->WritesDone();
  session->WritesDone();
  v1::PushResponse pr;
  while (push->Read(&pr)) {
  }
  while (session->Read(&sr)) {
  }
  push->Finish();
  session->Finish();

  // The node still serves a whole route.
  auto tokens = testkit::GreedyOverRoute({node.get()}, testkit::TestPrompt(), 3);
  EXPECT_TRUE(tokens.ok()) << tokens.status();
}

// A session opened on `node` (layers 0-30) as hop `hop` of its route, with the stream that keeps
// it open.
struct OpenedSession {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream;

  void Close() {
    stream->WritesDone();
    v1::SessionResponse r;
    while (stream->Read(&r)) {
    }
    stream->Finish();
  }
};

std::unique_ptr<OpenedSession> OpenSession(v1::Node::Stub* stub,
                                           const node::NodeServer& node,
                                           const std::string& id,
                                           const std::string& token,
                                           int hop) {
  auto s = std::make_unique<OpenedSession>();
  s->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  s->stream = stub->Session(&s->context);
  v1::SessionRequest open;
  v1::OpenSession* o = open.mutable_open();
  o->set_protocol_version(v1::PROTOCOL_VERSION_1);
  o->set_session_id(id);
  o->set_token(token);
  o->set_model_id(node.model().id());
  o->set_first_layer(0);
  o->set_last_layer(30);
  o->set_hop_index(hop);
  o->set_max_length(64);
  EXPECT_TRUE(s->stream->Write(open));
  v1::SessionResponse r;
  EXPECT_TRUE(s->stream->Read(&r));
  EXPECT_TRUE(r.has_opened()) << r.DebugString();
  return s;
}

struct PushOutcome {
  std::vector<v1::HandoffAnswer> answers;
  grpc::Status status;
};

// A push stream whose first message names `session` with `token` and carries `offer`; runs until
// the node ends it.
PushOutcome PushWithOffer(v1::Node::Stub* stub,
                          const std::string& session,
                          const std::string& token,
                          const v1::HandoffOffer& offer) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto push = stub->Push(&context);
  v1::PushRequest first;
  first.set_session_id(session);
  first.set_token(token);
  *first.mutable_handoff_offer() = offer;
  push->Write(first);  // may fail: the node may have refused the stream already
  PushOutcome out;
  v1::PushResponse r;
  while (push->Read(&r)) {
    if (r.has_handoff()) out.answers.push_back(r.handoff());
  }
  out.status = push->Finish();
  return out;
}

// An offer is taken only on a push stream the node accepted: a wrong token, an unknown session, a
// first hop's session (its ops come from the client) or a session's second push stream get no
// link, join no rendezvous and take no share of the budget; the session's own stream links.
TEST(HandoffInputTest, OffersOnRefusedPushStreamsTakeNoLink) {
  auto hub = std::make_shared<FakeHub>();
  auto fake = std::make_shared<FakeHandoff>(hub, FakeFaults{});
  node::NodeOptions o;
  o.node_id = "target";
  o.handoff = fake;
  auto node = testkit::StartSpanNode(o, 0, 30);
  ASSERT_NE(node, nullptr);
  auto stub =
      v1::Node::NewStub(grpc::CreateChannel(node->address(), grpc::InsecureChannelCredentials()));
  auto offer = [&] {
    v1::HandoffOffer offer;
    offer.set_transport("fake");
    offer.set_host_id("host-a");
    offer.set_rendezvous(hub->NewRendezvous());
    return offer;
  };
  auto expect_refused =
      [&](const std::string& session, const std::string& token, grpc::StatusCode code) {
        PushOutcome out = PushWithOffer(stub.get(), session, token, offer());
        EXPECT_EQ(out.status.error_code(), code) << session << ": " << out.status.error_message();
        for (const v1::HandoffAnswer& a : out.answers) {
          EXPECT_NE(a.state(), v1::HandoffAnswer::ACCEPTED) << session << ": " << a.DebugString();
        }
      };
  std::unique_ptr<OpenedSession> hop1 = OpenSession(stub.get(), *node, "hop-1", "right", 1);
  std::unique_ptr<OpenedSession> hop0 = OpenSession(stub.get(), *node, "hop-0", "right", 0);
  expect_refused("hop-1", "wrong", grpc::StatusCode::PERMISSION_DENIED);
  expect_refused("nobody", "right", grpc::StatusCode::NOT_FOUND);
  expect_refused("hop-0", "right", grpc::StatusCode::FAILED_PRECONDITION);

  // The session's own stream, with the offer in its first message too: accepted, and once this
  // test (as the previous hop) joins the rendezvous, the node confirms the link.
  grpc::ClientContext pctx;
  pctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto push = stub->Push(&pctx);
  v1::PushRequest first;
  first.set_session_id("hop-1");
  first.set_token("right");
  *first.mutable_handoff_offer() = offer();
  ASSERT_TRUE(push->Write(first));
  v1::PushResponse r;
  ASSERT_TRUE(push->Read(&r));
  ASSERT_EQ(r.handoff().state(), v1::HandoffAnswer::ACCEPTED) << r.DebugString();
  FakeHandoff upstream(hub, FakeFaults{});
  auto link = upstream.Connect(first.handoff_offer(), /*offering=*/true, absl::Seconds(10));
  ASSERT_TRUE(link.ok()) << link.status();
  ASSERT_TRUE(push->Read(&r));
  EXPECT_EQ(r.handoff().state(), v1::HandoffAnswer::READY) << r.DebugString();

  // A second stream for the session, with the right token, is refused and links nothing.
  expect_refused("hop-1", "right", grpc::StatusCode::ALREADY_EXISTS);
  // Only the accepted stream's offer reached the transport and holds a share of the budget.
  EXPECT_EQ(fake->connects(), 1);
  EXPECT_EQ(node->handoff_links_open(), 1);

  push->WritesDone();
  while (push->Read(&r)) {
  }
  EXPECT_TRUE(push->Finish().ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (node->handoff_links_open() > 0 && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(node->handoff_links_open(), 0);
  EXPECT_EQ(fake->connects(), 1);
  hop1->Close();
  hop0->Close();
}

}  // namespace
}  // namespace strata
