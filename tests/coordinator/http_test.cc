// The coordinator's HTTP endpoint in process, on 127.0.0.1:0, through httplib::Client.
#include "coordinator/http.h"

#include "common/clock.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/test_util.h"

namespace strata::coordinator {
namespace {

using ::testing::HasSubstr;
using testkit::AutoJoin;
using testkit::FixedJoin;

class HttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.grpc_address = "127.0.0.1:0";
    options.http_address = "127.0.0.1:0";
    options.clock = &clock_;
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_NE(server_->http_address(), nullptr);
    ASSERT_GT(server_->http_address()->port, 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->http_address()->port);
    client_->set_connection_timeout(5);
    client_->set_read_timeout(10);
  }

  // GET `path`; expects `status` and a JSON body.
  nlohmann::json GetJson(const std::string& path, int status = 200) {
    httplib::Result res = client_->Get(path);
    EXPECT_TRUE(res) << path << ": " << httplib::to_string(res.error());
    if (!res) return nullptr;
    EXPECT_EQ(res->status, status) << path << ": " << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    nlohmann::json j = nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << res->body;
    return j;
  }

  void Online(const std::string& id, int first, int last) {
    v1::HeartbeatRequest beat;
    beat.set_node_id(id);
    beat.set_state(v1::NODE_STATE_ONLINE);
    beat.set_first_layer(first);
    beat.set_last_layer(last);
    ASSERT_TRUE(server_->registry().Heartbeat(beat).ok());
  }

  FakeClock clock_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpTest, Healthz) {
  httplib::Result res = client_->Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  res = client_->Get("/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("/api/swarm"));
}

TEST_F(HttpTest, SwarmShowsTheNode) {
  ASSERT_TRUE(server_->registry().Join(FixedJoin("a", "10.0.0.1:7000", 30, 0, 20)).ok());
  Online("a", 0, 20);
  clock_.Advance(absl::Milliseconds(1500));

  nlohmann::json swarm = GetJson("/api/swarm");
  EXPECT_EQ(swarm["model_id"], testkit::kModel);
  EXPECT_EQ(swarm["num_layers"], 30);
  ASSERT_EQ(swarm["nodes"].size(), 1u);
  const nlohmann::json& node = swarm["nodes"][0];
  EXPECT_EQ(node["id"], "a");
  EXPECT_EQ(node["address"], "10.0.0.1:7000");
  EXPECT_EQ(node["first_layer"], 0);
  EXPECT_EQ(node["last_layer"], 20);
  EXPECT_EQ(node["state"], "online");
  EXPECT_EQ(node["backend"], "cpu/avx2");
  EXPECT_DOUBLE_EQ(node["throughput"].get<double>(), 50.0);
  EXPECT_EQ(node["uptime_ms"], 1500);
  EXPECT_EQ(node["heartbeat_age_ms"], 1500);
  EXPECT_EQ(node["banned"], false);
  EXPECT_TRUE(node["load"].contains("queue_depth"));
  EXPECT_TRUE(node["rtts"].is_array());
  ASSERT_EQ(swarm["coverage"].size(), 30u);
  EXPECT_EQ(swarm["coverage"][5]["node_ids"], nlohmann::json::array({"a"}));
  EXPECT_EQ(swarm["uncovered"].size(), 10u);
  EXPECT_EQ(swarm["uncovered"][0], 20);
  ASSERT_GE(swarm["events"].size(), 1u);
  EXPECT_EQ(swarm["events"][0]["kind"], "join");
}

TEST_F(HttpTest, RouteIsTheOneAClientWouldGet) {
  ASSERT_TRUE(server_->registry().Join(FixedJoin("a", "10.0.0.1:7000", 30, 0, 15)).ok());
  // The gap is reported as a 503 with the status code and message.
  nlohmann::json error = GetJson("/api/route", 503);
  EXPECT_EQ(error["error"]["code"], "UNAVAILABLE");
  EXPECT_THAT(error["error"]["message"].get<std::string>(), HasSubstr("layers 0-29"));

  ASSERT_TRUE(server_->registry().Join(FixedJoin("b", "10.0.0.2:7000", 30, 15, 30)).ok());
  ASSERT_TRUE(server_->registry().Join(FixedJoin("c", "10.0.0.3:7000", 30, 15, 30)).ok());
  Online("a", 0, 15);
  Online("b", 15, 30);
  Online("c", 15, 30);
  nlohmann::json route = GetJson("/api/route?alternates=2&exclude=c");
  EXPECT_EQ(route["num_layers"], 30);
  ASSERT_EQ(route["route"]["hops"].size(), 2u);
  EXPECT_EQ(route["route"]["hops"][0]["node_id"], "a");
  EXPECT_EQ(route["route"]["hops"][1]["node_id"], "b");
  EXPECT_EQ(route["route"]["hops"][1]["address"], "10.0.0.2:7000");
  EXPECT_EQ(route["route"]["hops"][1]["first_layer"], 15);
  EXPECT_GT(route["route"]["estimated_step_ms"].get<double>(), 0);
  EXPECT_TRUE(route["alternates"].empty());  // c is excluded

  route = GetJson("/api/route?alternates=2&start_layer=20");
  EXPECT_EQ(route["route"]["hops"].size(), 1u);
  EXPECT_EQ(route["alternates"].size(), 1u);

  EXPECT_EQ(GetJson("/api/route?start_layer=99", 400)["error"]["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(GetJson("/api/route?start_layer=x", 400)["error"]["code"], "INVALID_ARGUMENT");
}

TEST(HttpJsonTest, EmptySwarmIsWellShaped) {
  nlohmann::json j = SwarmToJson(v1::SwarmSnapshot());
  EXPECT_TRUE(j["nodes"].is_array());
  EXPECT_TRUE(j["coverage"].is_array());
  EXPECT_TRUE(j["uncovered"].is_array());
  EXPECT_TRUE(j["events"].is_array());
  EXPECT_EQ(j["num_layers"], 0);
}

}  // namespace
}  // namespace strata::coordinator
