#include "coordinator/registry.h"

#include <cmath>

#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/test_util.h"

namespace strata::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testkit::AutoJoin;
using testkit::FixedJoin;
using testkit::kModel;

v1::HeartbeatRequest Beat(const std::string& id,
                          int first = 0,
                          int last = 0,
                          v1::NodeState state = v1::NODE_STATE_ONLINE) {
  v1::HeartbeatRequest h;
  h.set_node_id(id);
  h.set_state(state);
  h.set_first_layer(first);
  h.set_last_layer(last);
  return h;
}

std::vector<std::string> Ids(const v1::SwarmSnapshot& s) {
  std::vector<std::string> ids;
  for (const v1::NodeStatus& n : s.nodes()) ids.push_back(n.node().node_id());
  return ids;
}

std::vector<std::string> EventKinds(const v1::SwarmSnapshot& s) {
  std::vector<std::string> kinds;
  for (const v1::SwarmEvent& e : s.events()) kinds.push_back(e.kind() + ":" + e.node_id());
  return kinds;
}

class RegistryTest : public ::testing::Test {
 protected:
  RegistryTest() : registry_(RegistryOptions{}, &clock_) {}

  v1::JoinResponse MustJoin(const v1::JoinRequest& request) {
    absl::StatusOr<v1::JoinResponse> r = registry_.Join(request);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(v1::JoinResponse());
  }
  v1::HeartbeatResponse MustBeat(const v1::HeartbeatRequest& request) {
    absl::StatusOr<v1::HeartbeatResponse> r = registry_.Heartbeat(request);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(v1::HeartbeatResponse());
  }
  absl::Duration BanLeft(const std::string& id) {
    const v1::SwarmSnapshot swarm = registry_.Snapshot();
    for (const v1::NodeStatus& n : swarm.nodes()) {
      if (n.node().node_id() == id && n.banned_until_unix_ms() > 0) {
        return absl::FromUnixMillis(n.banned_until_unix_ms()) - clock_.Now();
      }
    }
    return absl::ZeroDuration();
  }

  FakeClock clock_;
  Registry registry_;
};

TEST_F(RegistryTest, JoinAssignsIdSpanAndTimings) {
  v1::JoinResponse r = MustJoin(AutoJoin("", "10.0.0.1:7000", 30, 10));
  EXPECT_THAT(r.node_id(), ::testing::MatchesRegex("node-[0-9a-f]{12}"));
  EXPECT_EQ(r.first_layer(), 0);
  EXPECT_EQ(r.last_layer(), 10);
  EXPECT_EQ(r.heartbeat_interval_ms(), 1000);
  EXPECT_EQ(r.ttl_ms(), 6000);
  // The next nodes fill the rest of the model.
  EXPECT_EQ(MustJoin(AutoJoin("b", "10.0.0.2:7000", 30, 10)).first_layer(), 10);
  EXPECT_EQ(MustJoin(AutoJoin("c", "10.0.0.3:7000", 30, 10)).first_layer(), 20);

  v1::SwarmSnapshot s = registry_.Snapshot();
  EXPECT_EQ(s.model_id(), kModel);
  EXPECT_EQ(s.num_layers(), 30);
  ASSERT_EQ(s.nodes_size(), 3);
  EXPECT_EQ(s.nodes(0).state(), v1::NODE_STATE_JOINING);
  EXPECT_DOUBLE_EQ(s.nodes(0).throughput(), 100.0);  // 1000 / (1 ms x 10 layers)
  EXPECT_TRUE(s.uncovered_layers().empty());
  ASSERT_EQ(s.coverage_size(), 30);
  EXPECT_THAT(s.coverage(12).node_ids(), ElementsAre("b"));
  EXPECT_DOUBLE_EQ(s.coverage(12).throughput(), 100.0);
}

TEST_F(RegistryTest, SnapshotShowsCoverageAndGaps) {
  MustJoin(FixedJoin("a", "a:1", 10, 0, 4));
  MustJoin(FixedJoin("b", "b:1", 10, 2, 6, /*layer_ms=*/0.5));
  v1::SwarmSnapshot s = registry_.Snapshot();
  EXPECT_THAT(Ids(s), ElementsAre("a", "b"));
  EXPECT_THAT(s.coverage(3).node_ids(), ElementsAre("a", "b"));
  EXPECT_DOUBLE_EQ(s.coverage(3).throughput(), 250.0 + 500.0);
  EXPECT_THAT(s.uncovered_layers(), ElementsAre(6, 7, 8, 9));
}

TEST_F(RegistryTest, HeartbeatsKeepNodesAliveUntilTheTtl) {
  MustJoin(FixedJoin("a", "a:1", 10, 0, 10));
  clock_.Advance(absl::Seconds(5));
  EXPECT_TRUE(MustBeat(Beat("a")).known());
  clock_.Advance(absl::Seconds(6));  // exactly the TTL: still alive
  EXPECT_THAT(Ids(registry_.Snapshot()), ElementsAre("a"));
  clock_.Advance(absl::Milliseconds(1));
  v1::SwarmSnapshot s = registry_.Snapshot();
  EXPECT_TRUE(s.nodes().empty());
  EXPECT_THAT(EventKinds(s), ElementsAre("join:a", "state:a", "expire:a"));
  // The expiry is stamped when it happened: last heartbeat + TTL.
  EXPECT_EQ(s.events(2).unix_ms(), s.unix_ms() - 1);
  EXPECT_FALSE(MustBeat(Beat("a")).known());
}

TEST_F(RegistryTest, HeartbeatUpdatesStateSpanAndLoad) {
  MustJoin(FixedJoin("a", "a:1", 10, 0, 5));
  v1::HeartbeatRequest h = Beat("a", 0, 6);
  h.mutable_load()->set_queue_depth(3);
  v1::PeerRtt* rtt = h.add_rtts();
  rtt->set_node_id("b");
  rtt->set_rtt_ms(4.5);
  MustBeat(h);
  v1::SwarmSnapshot s = registry_.Snapshot();
  ASSERT_EQ(s.nodes_size(), 1);
  EXPECT_EQ(s.nodes(0).state(), v1::NODE_STATE_ONLINE);
  EXPECT_EQ(s.nodes(0).last_layer(), 6);
  EXPECT_EQ(s.nodes(0).load().queue_depth(), 3);
  EXPECT_EQ(s.nodes(0).rtts(0).rtt_ms(), 4.5);
  EXPECT_THAT(EventKinds(s), ElementsAre("join:a", "state:a", "move:a"));
  // A span outside the model is refused.
  EXPECT_EQ(registry_.Heartbeat(Beat("a", 5, 11)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // DRAINING is recorded; an empty span leaves the recorded one; UNSPECIFIED reads as ONLINE.
  MustBeat(Beat("a", 0, 0, v1::NODE_STATE_DRAINING));
  EXPECT_EQ(registry_.Snapshot().nodes(0).state(), v1::NODE_STATE_DRAINING);
  EXPECT_EQ(registry_.Snapshot().nodes(0).last_layer(), 6);
  MustBeat(Beat("a", 0, 0, v1::NODE_STATE_UNSPECIFIED));
  EXPECT_EQ(registry_.Snapshot().nodes(0).state(), v1::NODE_STATE_ONLINE);
}

TEST_F(RegistryTest, HeartbeatReRegistersAfterACoordinatorRestart) {
  v1::NodeDescriptor descriptor = FixedJoin("a", "a:1", 10, 0, 10).node();
  MustJoin(FixedJoin("a", "a:1", 10, 0, 10));
  // The coordinator restarts: a fresh registry knows nobody.
  Registry restarted(RegistryOptions{}, &clock_);
  absl::StatusOr<v1::HeartbeatResponse> r = restarted.Heartbeat(Beat("a", 0, 10));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->known());
  v1::HeartbeatRequest with_node = Beat("a", 0, 10);
  *with_node.mutable_node() = descriptor;
  r = restarted.Heartbeat(with_node);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->known());
  v1::SwarmSnapshot s = restarted.Snapshot();
  EXPECT_EQ(s.model_id(), kModel);
  ASSERT_EQ(s.nodes_size(), 1);
  EXPECT_EQ(s.nodes(0).state(), v1::NODE_STATE_ONLINE);
  EXPECT_EQ(s.nodes(0).node().address(), "a:1");
  EXPECT_TRUE(s.uncovered_layers().empty());
  EXPECT_THAT(EventKinds(s), ElementsAre("register:a"));
  // Re-registration needs the span, and a matching descriptor.
  Registry again(RegistryOptions{}, &clock_);
  with_node.set_last_layer(0);
  EXPECT_EQ(again.Heartbeat(with_node).status().code(), absl::StatusCode::kInvalidArgument);
  with_node.set_last_layer(10);
  with_node.mutable_node()->set_node_id("someone-else");
  EXPECT_EQ(again.Heartbeat(with_node).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, ProtocolAndModelMismatchesAreFailedPreconditions) {
  v1::JoinRequest old = AutoJoin("a", "a:1", 30, 10);
  old.set_protocol_version(v1::PROTOCOL_VERSION_UNSPECIFIED);
  absl::StatusOr<v1::JoinResponse> r = registry_.Join(old);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("PROTOCOL_VERSION_UNSPECIFIED (0)"));
  EXPECT_THAT(r.status().message(), HasSubstr("PROTOCOL_VERSION_1 (1)"));

  MustJoin(AutoJoin("a", "a:1", 30, 10));
  v1::JoinRequest other = AutoJoin("b", "b:1", 30, 10);
  other.mutable_node()->set_model_id("llama-7b");
  r = registry_.Join(other);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("'llama-7b'"));
  EXPECT_THAT(r.status().message(), HasSubstr(kModel));

  r = registry_.Join(AutoJoin("b", "b:1", 32, 10));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("32 layers"));

  // A heartbeat re-registration is held to the same model.
  v1::HeartbeatRequest h = Beat("c", 0, 10);
  *h.mutable_node() = other.node();
  h.mutable_node()->set_node_id("c");
  EXPECT_EQ(registry_.Heartbeat(h).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RegistryTest, ConfiguredModelIdIsEnforcedFromTheFirstNode) {
  RegistryOptions options;
  options.model_id = "llama-7b";
  Registry registry(options, &clock_);
  EXPECT_EQ(registry.Join(AutoJoin("a", "a:1", 30, 10)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry.Snapshot().model_id(), "llama-7b");
}

TEST_F(RegistryTest, SwarmModelIsForgottenWhenTheSwarmEmpties) {
  MustJoin(AutoJoin("a", "a:1", 30, 10));
  ASSERT_TRUE(registry_
                  .Leave([] {
                    v1::LeaveRequest l;
                    l.set_node_id("a");
                    return l;
                  }())
                  .ok());
  v1::JoinRequest other = AutoJoin("b", "b:1", 12, 4);
  other.mutable_node()->set_model_id("llama-7b");
  MustJoin(other);
  EXPECT_EQ(registry_.Snapshot().model_id(), "llama-7b");
  EXPECT_EQ(registry_.Snapshot().num_layers(), 12);
}

TEST_F(RegistryTest, BadDescriptorsAreInvalidArguments) {
  auto code = [&](auto edit) {
    v1::JoinRequest r = AutoJoin("a", "a:1", 30, 10);
    edit(r);
    return registry_.Join(r).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->clear_address(); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_address("no-port"); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_address("h:70000"); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->clear_model_id(); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_num_layers(0); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_num_layers(1 << 20); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_max_layers(-1); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_layer_ms(-1); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_layer_ms(NAN); }), kInvalid);
  EXPECT_EQ(code([](auto& r) { r.mutable_node()->set_node_id(std::string(200, 'x')); }), kInvalid);
  EXPECT_TRUE(registry_.Snapshot().nodes().empty());
  EXPECT_EQ(registry_.Heartbeat(Beat("")).status().code(), kInvalid);
  EXPECT_EQ(registry_.Leave(v1::LeaveRequest()).code(), kInvalid);
  EXPECT_EQ(registry_.ReportFailure(v1::FailureReport()).code(), kInvalid);
}

TEST_F(RegistryTest, RejoinReplacesTheRecord) {
  MustJoin(FixedJoin("a", "a:1", 30, 0, 10));
  v1::JoinResponse r = MustJoin(AutoJoin("a", "a:1", 30, 30));
  EXPECT_EQ(r.last_layer(), 30);
  EXPECT_THAT(Ids(registry_.Snapshot()), ElementsAre("a"));
  // A new id at the address of a member replaces it (a restarted node without a stable id).
  MustJoin(FixedJoin("a2", "a:1", 30, 0, 30));
  v1::SwarmSnapshot s = registry_.Snapshot();
  EXPECT_THAT(Ids(s), ElementsAre("a2"));
  EXPECT_THAT(EventKinds(s), ElementsAre("join:a", "join:a", "leave:a", "join:a2"));
}

TEST_F(RegistryTest, LeaveRemovesAndIsIdempotent) {
  MustJoin(FixedJoin("a", "a:1", 10, 0, 10));
  v1::LeaveRequest leave;
  leave.set_node_id("a");
  EXPECT_TRUE(registry_.Leave(leave).ok());
  EXPECT_TRUE(registry_.Leave(leave).ok());
  v1::SwarmSnapshot s = registry_.Snapshot();
  EXPECT_TRUE(s.nodes().empty());
  EXPECT_THAT(EventKinds(s), ElementsAre("join:a", "leave:a"));
}

TEST_F(RegistryTest, FailureBansDoubleAndReset) {
  MustJoin(FixedJoin("a", "a:1", 10, 0, 10));
  v1::FailureReport report;
  report.set_node_id("a");
  report.set_reason("stream reset");
  report.set_code(14);
  auto fail_and_ban = [&] {
    EXPECT_TRUE(registry_.ReportFailure(report).ok());
    return BanLeft("a");
  };
  auto keep_alive_for = [&](absl::Duration d) {  // heartbeats while time passes
    for (absl::Duration t; t < d; t += absl::Seconds(1)) {
      clock_.Advance(std::min(absl::Seconds(1), d - t));
      MustBeat(Beat("a"));
    }
  };
  EXPECT_EQ(fail_and_ban(), absl::Seconds(2));
  // Reports during a ban are the same incident: no escalation.
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(1));
  keep_alive_for(absl::Seconds(1));
  EXPECT_EQ(BanLeft("a"), absl::ZeroDuration());
  EXPECT_EQ(fail_and_ban(), absl::Seconds(4));
  keep_alive_for(absl::Seconds(4));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(8));
  keep_alive_for(absl::Seconds(8));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(16));
  keep_alive_for(absl::Seconds(16));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(32));
  keep_alive_for(absl::Seconds(32));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(60));  // capped
  keep_alive_for(absl::Seconds(60));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(60));
  EXPECT_EQ(registry_.Snapshot().nodes(0).failures(), 7);
  // A clean minute after the ban ends starts over.
  keep_alive_for(absl::Seconds(120));
  EXPECT_EQ(fail_and_ban(), absl::Seconds(2));
  EXPECT_EQ(registry_.Snapshot().nodes(0).failures(), 1);
  // A rejoin does not clear a ban.
  MustJoin(FixedJoin("a", "a:1", 10, 0, 10));
  EXPECT_EQ(BanLeft("a"), absl::Seconds(2));

  report.set_node_id("ghost");
  EXPECT_EQ(registry_.ReportFailure(report).code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, MembershipIsBounded) {
  RegistryOptions options;
  options.max_nodes = 2;
  Registry registry(options, &clock_);
  ASSERT_TRUE(registry.Join(FixedJoin("a", "a:1", 10, 0, 5)).ok());
  ASSERT_TRUE(registry.Join(FixedJoin("b", "b:1", 10, 5, 10)).ok());
  EXPECT_EQ(registry.Join(FixedJoin("c", "c:1", 10, 0, 10)).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Replacing a member (same id, or same address) is still allowed.
  EXPECT_TRUE(registry.Join(FixedJoin("a", "a:1", 10, 0, 10)).ok());
  EXPECT_TRUE(registry.Join(FixedJoin("b2", "b:1", 10, 0, 10)).ok());
}

TEST_F(RegistryTest, EventLogIsBounded) {
  RegistryOptions options;
  options.max_events = 4;
  Registry registry(options, &clock_);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(registry.Join(FixedJoin("a", "a:1", 10, 0, 10)).ok());
  }
  v1::SwarmSnapshot s = registry.Snapshot();
  EXPECT_EQ(s.events_size(), 4);
  EXPECT_THAT(s.events(3).detail(), HasSubstr("rejoined"));
}

}  // namespace
}  // namespace strata::coordinator
