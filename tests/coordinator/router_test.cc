#include "coordinator/router.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/test_util.h"

namespace strata::coordinator {
namespace {

using ::testing::HasSubstr;
using testkit::AddNode;
using testkit::EmptySwarm;
using testkit::Hops;
using testkit::kNowMs;

v1::RouteRequest Request(int start_layer = 0, int alternates = 0) {
  v1::RouteRequest r;
  r.set_start_layer(start_layer);
  r.set_alternates(alternates);
  return r;
}

v1::RouteResponse Plan(const v1::SwarmSnapshot& swarm,
                       const v1::RouteRequest& request = Request(),
                       const RouterOptions& options = {}) {
  absl::StatusOr<v1::RouteResponse> r = PlanRoute(swarm, request, options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.value_or(v1::RouteResponse());
}

TEST(RouterTest, SingleNode) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "a", .first = 0, .last = 30});
  v1::RouteResponse r = Plan(swarm);
  EXPECT_EQ(Hops(r.route()), "a[0,30)");
  EXPECT_EQ(r.route().hops(0).address(), "a.test:7000");
  EXPECT_EQ(r.num_layers(), 30);
  // In + 30 layers x 1 ms + overhead + back to the client.
  EXPECT_NEAR(r.route().estimated_step_ms(), 2 + 30 + 0.3 + 2, 1e-9);
}

TEST(RouterTest, ThreeNodeChain) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "c", .first = 20, .last = 30});
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  AddNode(swarm, {.id = "b", .first = 10, .last = 20});
  v1::RouteResponse r = Plan(swarm);
  EXPECT_EQ(Hops(r.route()), "a[0,10) b[10,20) c[20,30)");
  EXPECT_NEAR(r.route().estimated_step_ms(), 3 * (2 + 10 + 0.3) + 2, 1e-9);
}

TEST(RouterTest, HopsUsePartsOfSpans) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "fast", .first = 0, .last = 20, .layer_ms = 0.5});
  AddNode(swarm, {.id = "slow", .first = 10, .last = 30, .layer_ms = 1.0});
  EXPECT_EQ(Hops(Plan(swarm).route()), "fast[0,20) slow[20,30)");
  // Starting mid-model (failover from a held boundary).
  EXPECT_EQ(Hops(Plan(swarm, Request(15)).route()), "fast[15,20) slow[20,30)");
  EXPECT_EQ(Hops(Plan(swarm, Request(25)).route()), "slow[25,30)");
}

TEST(RouterTest, FewerHopsWinTies) {
  v1::SwarmSnapshot swarm = EmptySwarm(20);
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  AddNode(swarm, {.id = "b", .first = 10, .last = 20});
  AddNode(swarm, {.id = "whole", .first = 0, .last = 20});
  EXPECT_EQ(Hops(Plan(swarm).route()), "whole[0,20)");
}

TEST(RouterTest, PrefersLowerLoad) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  v1::NodeStatus* x = AddNode(swarm, {.id = "x", .first = 0, .last = 10, .queue_depth = 3});
  v1::NodeStatus* y = AddNode(swarm, {.id = "y", .first = 0, .last = 10, .queue_depth = 0});
  EXPECT_EQ(Hops(Plan(swarm).route()), "y[0,10)");
  x->mutable_load()->set_queue_depth(0);
  y->mutable_load()->set_queue_depth(2);
  EXPECT_EQ(Hops(Plan(swarm).route()), "x[0,10)");
}

TEST(RouterTest, UsesReportedRtts) {
  v1::SwarmSnapshot swarm = EmptySwarm(20);
  v1::NodeStatus* a = AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  AddNode(swarm, {.id = "near", .first = 10, .last = 20});
  AddNode(swarm, {.id = "far", .first = 10, .last = 20});
  v1::PeerRtt* rtt = a->add_rtts();
  rtt->set_node_id("near");
  rtt->set_rtt_ms(1.0);
  rtt = a->add_rtts();
  rtt->set_node_id("far");
  rtt->set_rtt_ms(40.0);
  v1::RouteResponse r = Plan(swarm);
  EXPECT_EQ(Hops(r.route()), "a[0,10) near[10,20)");
  EXPECT_NEAR(r.route().estimated_step_ms(), (2 + 10 + 0.3) + (0.5 + 10 + 0.3) + 2, 1e-9);
  // An RTT reported the other way round (near -> a) counts as well.
  a->clear_rtts();
  v1::PeerRtt* back = swarm.mutable_nodes(1)->add_rtts();
  back->set_node_id("a");
  back->set_rtt_ms(30.0);
  EXPECT_EQ(Hops(Plan(swarm).route()), "a[0,10) far[10,20)");
}

TEST(RouterTest, Exclusion) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "x", .first = 0, .last = 10, .queue_depth = 5});
  AddNode(swarm, {.id = "y", .first = 0, .last = 10});
  v1::RouteRequest request = Request();
  request.add_exclude_node_ids("y");
  EXPECT_EQ(Hops(Plan(swarm, request).route()), "x[0,10)");
}

TEST(RouterTest, AlternatesDifferAndAreSortedByCost) {
  v1::SwarmSnapshot swarm = EmptySwarm(20);
  AddNode(swarm, {.id = "a1", .first = 0, .last = 10});
  AddNode(swarm, {.id = "a2", .first = 0, .last = 10, .queue_depth = 1});
  AddNode(swarm, {.id = "b1", .first = 10, .last = 20});
  AddNode(swarm, {.id = "b2", .first = 10, .last = 20, .queue_depth = 2});
  v1::RouteResponse r = Plan(swarm, Request(0, 3));
  EXPECT_EQ(Hops(r.route()), "a1[0,10) b1[10,20)");
  ASSERT_EQ(r.alternates_size(), 3);
  std::set<std::string> seen = {Hops(r.route())};
  double last_cost = r.route().estimated_step_ms();
  for (const v1::Route& alt : r.alternates()) {
    EXPECT_TRUE(seen.insert(Hops(alt)).second) << "duplicate " << Hops(alt);
    EXPECT_GE(alt.estimated_step_ms(), last_cost);
    last_cost = alt.estimated_step_ms();
  }
  EXPECT_EQ(Hops(r.alternates(0)), "a2[0,10) b1[10,20)");
  EXPECT_EQ(Hops(r.alternates(1)), "a1[0,10) b2[10,20)");
  EXPECT_EQ(Hops(r.alternates(2)), "a2[0,10) b2[10,20)");
}

TEST(RouterTest, AlternatesStopWhenNoneAreLeft) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "x", .first = 0, .last = 10});
  AddNode(swarm, {.id = "y", .first = 0, .last = 10});
  v1::RouteResponse r = Plan(swarm, Request(0, 5));
  ASSERT_EQ(r.alternates_size(), 1);
  EXPECT_NE(Hops(r.alternates(0)), Hops(r.route()));
}

TEST(RouterTest, UncoveredLayersAreUnavailableAndNamed) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  AddNode(swarm, {.id = "b", .first = 15, .last = 30});
  absl::StatusOr<v1::RouteResponse> r = PlanRoute(swarm, Request());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(r.status().message(), "no route: layers 10-14 are not served by any available node");
  // From a boundary past the gap there is a route.
  EXPECT_EQ(Hops(Plan(swarm, Request(15)).route()), "b[15,30)");

  AddNode(swarm, {.id = "j", .first = 10, .last = 12, .state = v1::NODE_STATE_JOINING});
  v1::RouteRequest request = Request();
  request.add_exclude_node_ids("b");
  r = PlanRoute(swarm, request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(),
              HasSubstr("layers 10-29 are not served by any available node (b is excluded, "
                        "j is joining)"));
}

TEST(RouterTest, BannedNodesAreAvoided) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "x", .first = 0, .last = 10})->set_banned_until_unix_ms(kNowMs + 2000);
  AddNode(swarm, {.id = "y", .first = 0, .last = 10, .queue_depth = 5});
  EXPECT_EQ(Hops(Plan(swarm).route()), "y[0,10)");
  // An expired ban does not count.
  swarm.mutable_nodes(0)->set_banned_until_unix_ms(kNowMs - 1);
  EXPECT_EQ(Hops(Plan(swarm).route()), "x[0,10)");
}

TEST(RouterTest, BannedNodesAreAFallbackOnly) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "x", .first = 0, .last = 10})->set_banned_until_unix_ms(kNowMs + 2000);
  EXPECT_EQ(Hops(Plan(swarm).route()), "x[0,10)");
  RouterOptions strict;
  strict.banned_fallback = false;
  absl::StatusOr<v1::RouteResponse> r = PlanRoute(swarm, Request(), strict);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(), HasSubstr("x is banned"));
}

TEST(RouterTest, NonOnlineNodesAreNotRouted) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "j", .first = 0, .last = 10, .state = v1::NODE_STATE_JOINING});
  AddNode(swarm, {.id = "d", .first = 0, .last = 10, .state = v1::NODE_STATE_DRAINING});
  EXPECT_EQ(PlanRoute(swarm, Request()).status().code(), absl::StatusCode::kUnavailable);
}

TEST(RouterTest, ANodeAppearsOnceInARoute) {
  // Leaving the loaded node for one cheap layer and coming back would be "shorter"; a node holds
  // one range per route, so the detour is folded back into it.
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "big", .first = 0, .last = 30, .queue_depth = 4});
  AddNode(swarm, {.id = "tiny", .first = 10, .last = 11, .layer_ms = 0.01});
  v1::RouteResponse r = Plan(swarm, Request(0, 2));
  std::set<std::string> ids;
  for (const v1::Hop& h : r.route().hops()) EXPECT_TRUE(ids.insert(h.node_id()).second);
  EXPECT_EQ(Hops(r.route()), "big[0,30)");
}

TEST(RouterTest, BadRequests) {
  v1::SwarmSnapshot swarm = EmptySwarm(10);
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  EXPECT_EQ(PlanRoute(swarm, Request(10)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanRoute(swarm, Request(-1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanRoute(swarm, Request(0, -1)).status().code(), absl::StatusCode::kInvalidArgument);
  v1::RouteRequest other_model = Request();
  other_model.set_model_id("llama-70b");
  EXPECT_EQ(PlanRoute(swarm, other_model).status().code(), absl::StatusCode::kFailedPrecondition);
  other_model.set_model_id(testkit::kModel);
  EXPECT_TRUE(PlanRoute(swarm, other_model).ok());
  absl::StatusOr<v1::RouteResponse> empty = PlanRoute(v1::SwarmSnapshot(), Request());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(empty.status().message(), HasSubstr("no nodes"));
}

}  // namespace
}  // namespace strata::coordinator
