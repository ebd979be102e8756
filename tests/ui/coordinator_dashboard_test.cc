// The coordinator's dashboard files, /api/history and /metrics, in process (127.0.0.1:0), plus
// the pure pieces behind them (SampleSwarm, EventCounter, CoordinatorMetrics::Render).
#include "common/clock.h"
#include "coordinator/metrics.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/test_util.h"
#include "tests/ui/prom_text.h"

namespace strata::coordinator {
namespace {

using strata::testkit::ParsePromText;
using strata::testkit::PromText;
using ::testing::HasSubstr;

// Waits until `cond` holds (checked every 20 ms), at most `timeout`.
template <typename F>
bool WaitFor(F cond, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!cond()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

TEST(SampleSwarmTest, WeighsNodeRatesBySpanAndCountsClientSessionsAtLayerZero) {
  v1::SwarmSnapshot s = testkit::EmptySwarm(30);
  v1::NodeStatus* a = testkit::AddNode(s, {"a", 0, 10});
  v1::NodeStatus* b = testkit::AddNode(s, {"b", 10, 30, 1.0, v1::NODE_STATE_JOINING});
  a->mutable_load()->set_tokens_per_s(60);  // 60 rows/s over 10 of 30 layers
  a->mutable_load()->set_active_sessions(2);
  a->mutable_load()->set_kv_used_bytes(100);
  b->mutable_load()->set_tokens_per_s(30);  // 30 rows/s over 20 of 30 layers
  b->mutable_load()->set_active_sessions(2);
  b->mutable_load()->set_queue_depth(3);
  s.add_uncovered_layers(29);
  SwarmSample x = SampleSwarm(s);
  EXPECT_DOUBLE_EQ(x.tokens_per_s, 60.0 * 10 / 30 + 30.0 * 20 / 30);
  EXPECT_DOUBLE_EQ(x.node_rows_per_s, 90);
  EXPECT_EQ(x.sessions, 2);
  EXPECT_EQ(x.node_sessions, 4);
  EXPECT_EQ(x.nodes, 2);
  EXPECT_EQ(x.online, 1);
  EXPECT_EQ(x.queue_depth, 3);
  EXPECT_EQ(x.kv_used_bytes, 100);
  EXPECT_EQ(x.uncovered_layers, 1);
  EXPECT_EQ(SampleToJson(x)["tokens_per_s"], x.tokens_per_s);
}

TEST(SwarmSamplerTest, RatesComeFromTheGrowthOfEachNodesRows) {
  v1::SwarmSnapshot s = testkit::EmptySwarm(30);
  v1::NodeStatus* a = testkit::AddNode(s, {"a", 0, 10});
  a->mutable_load()->set_total_rows(100);
  a->mutable_load()->set_tokens_per_s(0);  // its last heartbeat interval was idle
  SwarmSampler sampler;
  EXPECT_EQ(sampler.Next(s).tokens_per_s, 0);
  s.set_unix_ms(s.unix_ms() + 2000);
  a->mutable_load()->set_total_rows(160);  // 60 rows in 2 s over 10 of 30 layers
  v1::NodeStatus* b = testkit::AddNode(s, {"b", 10, 30});
  b->mutable_load()->set_total_rows(1000);  // new: its own rate counts
  b->mutable_load()->set_tokens_per_s(3);
  SwarmSample x = sampler.Next(s);
  EXPECT_DOUBLE_EQ(x.node_rows_per_s, 30 + 3);
  EXPECT_DOUBLE_EQ(x.tokens_per_s, 30.0 * 10 / 30 + 3.0 * 20 / 30);
  s.set_unix_ms(s.unix_ms() + 1000);
  b->mutable_load()->set_total_rows(10);  // restarted: its count went down
  x = sampler.Next(s);
  EXPECT_DOUBLE_EQ(x.node_rows_per_s, 0 + 3);
  // Joined after the previous sample and already busy: its whole count is this interval's, even
  // though its last heartbeat interval was idle.
  const int64_t before = s.unix_ms();
  s.set_unix_ms(before + 1000);
  v1::NodeStatus* c = testkit::AddNode(s, {"c", 0, 30});
  c->set_joined_unix_ms(before + 100);
  c->mutable_load()->set_total_rows(50);
  c->mutable_load()->set_tokens_per_s(0);
  x = sampler.Next(s);
  EXPECT_DOUBLE_EQ(x.node_rows_per_s, 50);  // a and b did nothing
}

TEST(SwarmHistoryTest, KeepsTheNewestSamples) {
  SwarmHistory h(3);
  for (int i = 1; i <= 5; ++i) h.Add(SwarmSample{.unix_ms = i * 1000});
  std::vector<SwarmSample> all = h.Since(0);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all.front().unix_ms, 3000);
  EXPECT_EQ(h.Since(4000).size(), 1u);
}

TEST(EventCounterTest, CountsEachEventOnceEvenWhenTheLogDrops) {
  CoordinatorMetrics metrics;
  EventCounter counter(&metrics);
  v1::SwarmSnapshot s = testkit::EmptySwarm(30);
  auto event = [&](int64_t ms, const char* kind, const char* node) {
    v1::SwarmEvent* e = s.add_events();
    e->set_unix_ms(ms);
    e->set_kind(kind);
    e->set_node_id(node);
  };
  auto count = [&](const std::string& kind) {
    return ParsePromText(metrics.Render(s))
        .Get("strata_coordinator_events_total", {{"kind", kind}})
        .value_or(-1);
  };
  event(1, "join", "a");
  event(2, "join", "b");
  counter.Track(s);
  counter.Track(s);
  EXPECT_EQ(count("join"), 2);
  event(3, "expire", "a");
  counter.Track(s);
  EXPECT_EQ(count("expire"), 1);
  EXPECT_EQ(count("join"), 2);
  // The log dropped everything counted so far: every event left is new.
  s.clear_events();
  event(4, "leave", "b");
  event(5, "failure", "b");
  counter.Track(s);
  EXPECT_EQ(count("leave"), 1);
  EXPECT_EQ(count("failure"), 1);
  EXPECT_EQ(count("move"), 0);  // present before it ever happens
}

TEST(CoordinatorMetricsTest, RendersSwarmGaugesWithHostileIdsEscaped) {
  CoordinatorMetrics metrics;
  v1::SwarmSnapshot s = testkit::EmptySwarm(30);
  const std::string hostile = "evil\"}\nnode\\x 1";
  v1::NodeStatus* n = testkit::AddNode(s, {hostile, 0, 30});
  n->mutable_load()->set_total_rows(1234);
  n->mutable_load()->set_kv_used_bytes(4096);
  metrics.ObserveRoutePlan("grpc", absl::Microseconds(40), absl::StatusCode::kOk);
  const std::string text = metrics.Render(s);
  PromText p = ParsePromText(text);
  EXPECT_EQ(p.Get("strata_swarm_nodes", {{"state", "online"}}), 1);
  EXPECT_EQ(p.Get("strata_swarm_layers"), 30);
  EXPECT_EQ(p.Get("strata_swarm_node_rows_total", {{"node_id", hostile}}), 1234);
  EXPECT_EQ(p.Get("strata_swarm_node_kv_used_bytes", {{"node_id", hostile}}), 4096);
  EXPECT_EQ(p.types["strata_swarm_node_rows_total"], "counter");
  EXPECT_EQ(p.types["strata_coordinator_route_plan_seconds"], "histogram");
  EXPECT_EQ(p.Get("strata_coordinator_route_plan_seconds_count", {{"source", "grpc"}}), 1);
  EXPECT_EQ(p.Get("strata_coordinator_route_plans_total", {{"source", "grpc"}, {"code", "OK"}}), 1);
  EXPECT_EQ(p.All("strata_swarm_layer_throughput_tokens_per_second").size(), 0u);
}

class DashboardHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.grpc_address = "127.0.0.1:0";
    options.http_address = "127.0.0.1:0";
    options.clock = &clock_;
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->http_address()->port);
    client_->set_read_timeout(10);
  }

  httplib::Result Get(const std::string& path) {
    httplib::Result r = client_->Get(path);
    EXPECT_TRUE(r) << path;
    return r;
  }

  PromText Metrics() {
    httplib::Result r = Get("/metrics");
    if (!r) return {};
    EXPECT_EQ(r->status, 200);
    EXPECT_THAT(r->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
    return ParsePromText(r->body);
  }

  void Join(const std::string& id, int first, int last) {
    ASSERT_TRUE(
        server_->registry().Join(testkit::FixedJoin(id, id + ".test:7000", 30, first, last)).ok());
    v1::HeartbeatRequest beat;
    beat.set_node_id(id);
    beat.set_state(v1::NODE_STATE_ONLINE);
    beat.set_first_layer(first);
    beat.set_last_layer(last);
    beat.mutable_load()->set_tokens_per_s(50);
    beat.mutable_load()->set_active_sessions(1);
    ASSERT_TRUE(server_->registry().Heartbeat(beat).ok());
  }

  FakeClock clock_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(DashboardHttpTest, ServesThePageAndItsFilesFromTheBinary) {
  httplib::Result r = Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_THAT(r->get_header_value("Content-Security-Policy"), HasSubstr("default-src 'self'"));
  EXPECT_THAT(r->body, HasSubstr("<script src=\"/app.js\""));
  EXPECT_THAT(r->body, HasSubstr("/api/swarm"));
  r = Get("/app.js");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/javascript; charset=utf-8");
  EXPECT_THAT(r->body, HasSubstr("/api/history"));
  // Node strings reach the page as text only.
  EXPECT_THAT(r->body, ::testing::Not(HasSubstr("innerHTML")));
  r = Get("/style.css");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/css; charset=utf-8");
  r = Get("/chart.js");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << "install libjs-chart.js";
  EXPECT_THAT(r->body.substr(0, 200), HasSubstr("Chart.js v3"));
}

TEST_F(DashboardHttpTest, HistoryFillsOncePerSecond) {
  Join("a", 0, 30);
  ASSERT_TRUE(WaitFor([&] {
    httplib::Result r = client_->Get("/api/history");
    if (!r || r->status != 200) return false;
    nlohmann::json j = nlohmann::json::parse(r->body);
    return j["samples"].size() >= 2;
  }));
  nlohmann::json j = nlohmann::json::parse(Get("/api/history")->body);
  EXPECT_EQ(j["interval_ms"], 1000);
  EXPECT_EQ(j["capacity"], 900);
  const nlohmann::json& last = j["samples"].back();
  EXPECT_EQ(last["nodes"], 1);
  EXPECT_EQ(last["online"], 1);
  EXPECT_EQ(last["sessions"], 1);
  EXPECT_DOUBLE_EQ(last["tokens_per_s"].get<double>(), 50.0);
  const int64_t newest = last["unix_ms"];
  j = nlohmann::json::parse(Get("/api/history?since=" + std::to_string(newest))->body);
  EXPECT_TRUE(j["samples"].empty());
  EXPECT_EQ(Get("/api/history?since=x")->status, 400);
}

TEST_F(DashboardHttpTest, RouteErrorsCanComeInTheBody) {
  httplib::Result r = Get("/api/route");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  r = Get("/api/route?errors=body");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["code"], "UNAVAILABLE");
}

TEST_F(DashboardHttpTest, MetricsCountEventsRoutePlansAndRequests) {
  PromText before = Metrics();
  const double joins =
      before.Get("strata_coordinator_events_total", {{"kind", "join"}}).value_or(0);
  const double plans =
      before.Get("strata_coordinator_route_plan_seconds_count", {{"source", "http"}}).value_or(0);
  Join("a", 0, 15);
  Join("b", 15, 30);
  ASSERT_EQ(Get("/api/route")->status, 200);
  // The sampler counts the joins within a second or so.
  ASSERT_TRUE(WaitFor([&] {
    return Metrics().Get("strata_coordinator_events_total", {{"kind", "join"}}).value_or(0) >=
           joins + 2;
  }));
  PromText after = Metrics();
  EXPECT_EQ(after.Get("strata_coordinator_route_plan_seconds_count", {{"source", "http"}}),
            plans + 1);
  EXPECT_EQ(after.Get("strata_swarm_nodes", {{"state", "online"}}), 2);
  EXPECT_EQ(after.Get("strata_swarm_uncovered_layers"), 0);
  EXPECT_EQ(after.Get("strata_swarm_node_first_layer", {{"node_id", "b"}}), 15);
  EXPECT_EQ(after.All("strata_swarm_layer_throughput_tokens_per_second").size(), 30u);
  EXPECT_GE(after
                .Get("strata_coordinator_http_requests_total",
                     {{"handler", "/api/route"}, {"code", "200"}})
                .value_or(0),
            1);
  // Buckets of the histogram are cumulative and end at the count.
  std::vector<strata::testkit::PromSample> buckets =
      after.All("strata_coordinator_route_plan_seconds_bucket", {{"source", "http"}});
  ASSERT_FALSE(buckets.empty());
  for (size_t i = 1; i < buckets.size(); ++i) EXPECT_GE(buckets[i].value, buckets[i - 1].value);
  EXPECT_EQ(buckets.back().labels["le"], "+Inf");
  EXPECT_EQ(buckets.back().value, plans + 1);
}

}  // namespace
}  // namespace strata::coordinator
