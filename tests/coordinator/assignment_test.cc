#include "coordinator/assignment.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/test_util.h"

namespace strata::coordinator {
namespace {

using ::testing::HasSubstr;
using testkit::AddNode;
using testkit::AutoJoin;
using testkit::EmptySwarm;
using testkit::FixedJoin;

LayerRange Choose(const v1::SwarmSnapshot& swarm, int max_layers) {
  absl::StatusOr<LayerRange> span =
      ChooseSpan(swarm, AutoJoin("new", "new:1", swarm.num_layers(), max_layers));
  EXPECT_TRUE(span.ok()) << span.status();
  return span.value_or(LayerRange{-1, -1});
}

TEST(AssignmentTest, ThroughputIsTokensPerSecondOverTheSpan) {
  EXPECT_DOUBLE_EQ(NodeThroughput(2.0, 10), 50.0);
  EXPECT_DOUBLE_EQ(NodeThroughput(0.0, 10), 1000.0 / (kDefaultLayerMs * 10));
  EXPECT_DOUBLE_EQ(NodeThroughput(1.0, 0), 0.0);
}

TEST(AssignmentTest, EmptySwarmGetsTheFirstLayers) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  EXPECT_EQ(Choose(swarm, 10), (LayerRange{0, 10}));
  EXPECT_EQ(Choose(swarm, 0), (LayerRange{0, 30}));   // no limit
  EXPECT_EQ(Choose(swarm, 99), (LayerRange{0, 30}));  // capped by the model
}

TEST(AssignmentTest, FillsTheGapFirst) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  AddNode(swarm, {.id = "b", .first = 20, .last = 30});
  EXPECT_EQ(Choose(swarm, 10), (LayerRange{10, 20}));
  EXPECT_EQ(Choose(swarm, 5), (LayerRange{10, 15}));  // ties: the lowest start
  // A wider node still covers the whole gap, reaching into the weaker neighbour.
  v1::SwarmSnapshot uneven = EmptySwarm(30);
  AddNode(uneven, {.id = "fast", .first = 0, .last = 12, .layer_ms = 0.1});
  AddNode(uneven, {.id = "slow", .first = 20, .last = 30, .layer_ms = 5.0});
  EXPECT_EQ(Choose(uneven, 10), (LayerRange{12, 22}));
}

TEST(AssignmentTest, GapThenWeakestNeighbours) {
  v1::SwarmSnapshot swarm = EmptySwarm(12);
  AddNode(swarm, {.id = "a", .first = 0, .last = 4});
  AddNode(swarm, {.id = "b", .first = 5, .last = 12, .layer_ms = 0.01});
  // Only layer 4 is uncovered: every window holding it ties on the gap, then the weaker rest wins.
  EXPECT_EQ(Choose(swarm, 3), (LayerRange{2, 5}));
}

TEST(AssignmentTest, TakesTheWeakestWindow) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "all", .first = 0, .last = 30});
  AddNode(swarm, {.id = "front", .first = 0, .last = 15});
  EXPECT_EQ(Choose(swarm, 10), (LayerRange{15, 25}));
}

TEST(AssignmentTest, UniformCoverageTiesToTheLowestStart) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "a", .first = 0, .last = 15});
  AddNode(swarm, {.id = "b", .first = 15, .last = 30});
  EXPECT_EQ(Choose(swarm, 10), (LayerRange{0, 10}));
}

TEST(AssignmentTest, JoiningNodesCountDrainingNodesDoNot) {
  v1::SwarmSnapshot swarm = EmptySwarm(20);
  AddNode(swarm, {.id = "j", .first = 0, .last = 10, .state = v1::NODE_STATE_JOINING});
  AddNode(swarm, {.id = "d", .first = 10, .last = 20, .state = v1::NODE_STATE_DRAINING});
  EXPECT_EQ(Choose(swarm, 10), (LayerRange{10, 20}));
}

TEST(AssignmentTest, FixedSpanIsHonoured) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  AddNode(swarm, {.id = "a", .first = 0, .last = 10});
  auto span = ChooseSpan(swarm, FixedJoin("n", "n:1", 30, 0, 10));
  ASSERT_TRUE(span.ok()) << span.status();
  EXPECT_EQ(*span, (LayerRange{0, 10}));
}

TEST(AssignmentTest, FixedSpanIsValidated) {
  v1::SwarmSnapshot swarm = EmptySwarm(30);
  for (auto [first, last] : {std::pair{0, 31}, {-1, 5}, {5, 5}, {7, 3}}) {
    auto span = ChooseSpan(swarm, FixedJoin("n", "n:1", 30, first, last));
    EXPECT_EQ(span.status().code(), absl::StatusCode::kInvalidArgument) << first << "," << last;
    EXPECT_THAT(span.status().message(), HasSubstr("[0, 30)"));
  }
  v1::JoinRequest too_long = FixedJoin("n", "n:1", 30, 0, 20);
  too_long.mutable_node()->set_max_layers(10);
  EXPECT_THAT(ChooseSpan(swarm, too_long).status().message(), HasSubstr("max_layers 10"));
}

// Moves of running nodes. Three movable nodes of 15 layers on 30: two serve [0,15), one [15,30).
v1::SwarmSnapshot TwoToOne(double lone_layer_ms) {
  v1::SwarmSnapshot s = testkit::EmptySwarm(30);
  for (auto [id, first, ms] : {std::tuple{"a", 0, 1.0}, {"b", 0, 1.0}, {"c", 15, lone_layer_ms}}) {
    v1::NodeStatus* n = testkit::AddNode(s, {id, first, first + 15, ms});
    n->mutable_node()->set_movable(true);
    n->mutable_node()->set_max_layers(15);
  }
  return s;
}

TEST(PlanMoveTest, RebalancesOnlyWhenTheWeakestLayersGainEnough) {
  // c is four times slower than a and b: [15,30) serves a quarter of what [0,15) serves twice
  // over. Moving a there lifts the weakest layers from 0.25 to 1 (in a's units).
  const v1::SwarmSnapshot slow_c = TwoToOne(4.0);
  std::optional<LayerRange> to = PlanMove(slow_c, "a", {});
  ASSERT_TRUE(to.has_value());
  EXPECT_EQ(to->first_layer, 15);
  // All equal: moving a would leave [0,15) as weak as [15,30) is now.
  EXPECT_FALSE(PlanMove(TwoToOne(1.0), "a", {}).has_value());
  // Balance quality 0: never for throughput.
  EXPECT_FALSE(PlanMove(slow_c, "a", {}, MoveOptions{.balance_quality = 0}).has_value());
}

TEST(PlanMoveTest, RepairsAGapEvenWithoutRebalancing) {
  v1::SwarmSnapshot s = TwoToOne(1.0);
  s.mutable_nodes()->RemoveLast();  // c is gone: [15,30) is served by nobody
  std::optional<LayerRange> to = PlanMove(s, "a", {}, MoveOptions{.balance_quality = 0});
  ASSERT_TRUE(to.has_value());
  EXPECT_EQ(to->first_layer, 15);
  // b alone would still serve [0,15); a move already ordered counts as done.
  EXPECT_FALSE(
      PlanMove(s, "b", {{"a", LayerRange{15, 30}}}, MoveOptions{.balance_quality = 0}).has_value());
}

}  // namespace
}  // namespace strata::coordinator
