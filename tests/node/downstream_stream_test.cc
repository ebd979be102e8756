// A node's push stream to the next hop, where the next hop ends it while the node still writes
// and half-closes it (a next hop whose session ended first, or one that failed): no write may
// start on a call that has ended, and every stream reports its end.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "node/service.h"
#include "strata/v1/node.grpc.pb.h"

namespace strata {
namespace {

// A next hop that ends every push stream as soon as its first message arrives.
class EndsAtOnce final : public v1::Node::CallbackService {
 public:
  grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse>* Push(
      grpc::CallbackServerContext*) override {
    class Reactor final : public grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse> {
     public:
      Reactor() { StartRead(&request_); }
      void OnReadDone(bool) override { Finish(grpc::Status::OK); }
      void OnDone() override { delete this; }

     private:
      v1::PushRequest request_;
    };
    return new Reactor();
  }
};

TEST(DownstreamStreamTest, WritesRacingTheNextHopsEndAreDropped) {
  EndsAtOnce service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string address = "127.0.0.1:" + std::to_string(port);

  node::DownstreamFactory factory = node::GrpcDownstreamFactory();
  v1::PushRequest op;
  op.set_session_id("s");
  op.mutable_op()->set_op_seq(1);
  op.mutable_op()->mutable_truncate()->set_from_pos(0);

  // Threads like the worker: each opens streams, writes, and after a varying pause (around the
  // time the next hop ends the stream) writes more; half the streams are then half-closed by this
  // side, like a session that closes.
  constexpr int kThreads = 4, kPerThread = 600, kStreams = kThreads * kPerThread;
  auto ended = std::make_shared<std::atomic<int>>(0);  // outlives streams that end late
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::shared_ptr<node::DownstreamLink> link =
            factory(address, [ended](const absl::Status&) { (*ended)++; });
        link->Send(op);
        absl::SleepFor(absl::Microseconds((i * 37 + t * 11) % 600));
        for (int k = 0; k < 8; ++k) link->Send(op);
        if (i % 2 == 0) link->Close();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // Every stream the node did not close itself reports that the next hop ended it.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (ended->load() < kStreams / 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(ended->load(), kStreams / 2);
  server->Shutdown();
}

}  // namespace
}  // namespace strata
