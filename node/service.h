// The strata.v1.Node gRPC service (callback API): stream reactors that hand every message to the
// Worker and write what it sends back.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "node/handoff.h"
#include "node/links.h"
#include "node/worker.h"
#include "strata/v1/node.grpc.pb.h"

namespace strata::node {

class NodeService final : public v1::Node::CallbackService {
 public:
  // `info` fills the live NodeInfo for the Info RPC; `handoff` decides which offers of a direct
  // link from previous hops this node takes.
  NodeService(Worker* worker, std::function<void(v1::NodeInfo*)> info, HandoffOptions handoff = {});

  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse>* Push(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* context,
                                 const v1::InfoRequest* request,
                                 v1::NodeInfo* response) override;

 private:
  Worker* worker_;
  std::function<void(v1::NodeInfo*)> info_;
  HandoffOptions handoff_;
};

// Opens Push streams to next hops over cached channels, each offering `handoff`'s direct link
// (none without a provider) and reporting on its board.
DownstreamFactory GrpcDownstreamFactory(HandoffOptions handoff = {});

}  // namespace strata::node
