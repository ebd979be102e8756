// The Coordinator gRPC service in process, on 127.0.0.1:0, through a real channel.
#include "coordinator/service.h"

#include <chrono>

#include "common/clock.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "health_check.grpc.pb.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "tests/coordinator/test_util.h"

namespace strata::coordinator {
namespace {

using ::testing::HasSubstr;
using testkit::AutoJoin;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options;
    options.grpc_address = "127.0.0.1:0";
    options.clock = &clock_;
    absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->grpc_address().port, 0);
    channel_ =
        grpc::CreateChannel(server_->grpc_address().ToString(), grpc::InsecureChannelCredentials());
    stub_ = v1::Coordinator::NewStub(channel_);
  }

  // Every call gets a deadline.
  std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  }

  FakeClock clock_;
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

TEST_F(ServiceTest, JoinHeartbeatRouteSnapshotLeave) {
  v1::JoinResponse joined;
  grpc::Status st = stub_->Join(Context().get(), AutoJoin("", "127.0.0.1:7001", 30, 0), &joined);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(joined.node_id().empty());
  EXPECT_EQ(joined.first_layer(), 0);
  EXPECT_EQ(joined.last_layer(), 30);
  EXPECT_EQ(joined.ttl_ms(), 6000);

  // Still loading its span: not routable yet.
  v1::RouteRequest route_request;
  route_request.set_alternates(2);
  v1::RouteResponse route;
  st = stub_->GetRoute(Context().get(), route_request, &route);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(st.error_message(), HasSubstr("layers 0-29"));

  v1::HeartbeatRequest beat;
  beat.set_node_id(joined.node_id());
  beat.set_state(v1::NODE_STATE_ONLINE);
  beat.set_first_layer(0);
  beat.set_last_layer(30);
  v1::HeartbeatResponse beat_response;
  st = stub_->Heartbeat(Context().get(), beat, &beat_response);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(beat_response.known());

  st = stub_->GetRoute(Context().get(), route_request, &route);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(route.num_layers(), 30);
  ASSERT_EQ(route.route().hops_size(), 1);
  EXPECT_EQ(route.route().hops(0).node_id(), joined.node_id());
  EXPECT_EQ(route.route().hops(0).address(), "127.0.0.1:7001");
  EXPECT_GT(route.route().estimated_step_ms(), 30);

  v1::SwarmSnapshot swarm;
  st = stub_->GetSwarm(Context().get(), v1::SwarmRequest(), &swarm);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(swarm.nodes_size(), 1);
  EXPECT_EQ(swarm.nodes(0).state(), v1::NODE_STATE_ONLINE);
  EXPECT_EQ(swarm.model_id(), testkit::kModel);

  v1::FailureReport report;
  report.set_node_id(joined.node_id());
  report.set_code(static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
  v1::FailureAck ack;
  st = stub_->ReportFailure(Context().get(), report, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = stub_->GetSwarm(Context().get(), v1::SwarmRequest(), &swarm);
  ASSERT_TRUE(st.ok());
  EXPECT_GT(swarm.nodes(0).banned_until_unix_ms(), swarm.unix_ms());

  v1::LeaveRequest leave;
  leave.set_node_id(joined.node_id());
  v1::LeaveResponse left;
  st = stub_->Leave(Context().get(), leave, &left);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = stub_->GetSwarm(Context().get(), v1::SwarmRequest(), &swarm);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(swarm.nodes_size(), 0);
  EXPECT_EQ(swarm.events(swarm.events_size() - 1).kind(), "leave");
}

TEST_F(ServiceTest, BadRequestsGetTheRightCodes) {
  v1::JoinResponse joined;
  v1::JoinRequest old = AutoJoin("a", "127.0.0.1:7001", 30, 10);
  old.set_protocol_version(v1::PROTOCOL_VERSION_UNSPECIFIED);
  grpc::Status st = stub_->Join(Context().get(), old, &joined);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("protocol version mismatch"));

  v1::JoinRequest no_address = AutoJoin("a", "", 30, 10);
  EXPECT_EQ(stub_->Join(Context().get(), no_address, &joined).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::HeartbeatResponse beat_response;
  EXPECT_EQ(stub_->Heartbeat(Context().get(), v1::HeartbeatRequest(), &beat_response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::HeartbeatRequest stranger;
  stranger.set_node_id("stranger");
  ASSERT_TRUE(stub_->Heartbeat(Context().get(), stranger, &beat_response).ok());
  EXPECT_FALSE(beat_response.known());

  v1::RouteResponse route;
  EXPECT_EQ(stub_->GetRoute(Context().get(), v1::RouteRequest(), &route).error_code(),
            grpc::StatusCode::UNAVAILABLE);  // empty swarm
  ASSERT_TRUE(stub_->Join(Context().get(), AutoJoin("a", "127.0.0.1:7001", 30, 0), &joined).ok());
  v1::RouteRequest bad_start;
  bad_start.set_start_layer(30);
  EXPECT_EQ(stub_->GetRoute(Context().get(), bad_start, &route).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::FailureReport report;
  report.set_node_id("ghost");
  v1::FailureAck ack;
  EXPECT_EQ(stub_->ReportFailure(Context().get(), report, &ack).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, HealthServiceReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "strata.v1.Coordinator"}) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status st = health->Check(Context().get(), request, &response);
    ASSERT_TRUE(st.ok()) << service << ": " << st.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(ServiceTest, PortInUseIsAClearError) {
  CoordinatorOptions options;
  options.grpc_address = server_->grpc_address().ToString();
  options.clock = &clock_;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> second = CoordinatorServer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("in use"));
}

TEST(HostPortTest, Parses) {
  auto hp = ParseHostPort("127.0.0.1:0");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 0);
  hp = ParseHostPort("[::1]:7100");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 7100);
  EXPECT_EQ(hp->ToString(), "[::1]:7100");
  for (const char* bad : {"",
                          "7100",
                          ":7100",
                          "host:",
                          "host:port",
                          "host:65536",
                          "host:-1",
                          "::1:7100",
                          "[::1]7100",
                          "host:1 "}) {
    EXPECT_EQ(ParseHostPort(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(HostPortTest, BadHostIsAClearError) {
  CoordinatorOptions options;
  options.grpc_address = "no-such-host.invalid:0";
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(server.status().message(), HasSubstr("no-such-host.invalid"));
}

}  // namespace
}  // namespace strata::coordinator
