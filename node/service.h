// The strata.v1.Node gRPC service (callback API): stream reactors that hand every message to the
// Worker and write what it sends back.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "node/links.h"
#include "node/worker.h"
#include "strata/v1/node.grpc.pb.h"

namespace strata::node {

class NodeService final : public v1::Node::CallbackService {
 public:
  // `info` fills the live NodeInfo for the Info RPC.
  NodeService(Worker* worker, std::function<void(v1::NodeInfo*)> info);

  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse>* Push(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* context,
                                 const v1::InfoRequest* request, v1::NodeInfo* response) override;

 private:
  Worker* worker_;
  std::function<void(v1::NodeInfo*)> info_;
};

// Opens Push streams to next hops over cached channels.
DownstreamFactory GrpcDownstreamFactory();

}  // namespace strata::node
