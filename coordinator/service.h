// The strata.v1.Coordinator gRPC service over a Registry, with the callback API. Every reaction
// does only quick in-memory work (a registry update, or a snapshot plus PlanRoute) and finishes
// at once; absl::Status errors become the gRPC status with the same code and message here, at the
// service edge, and nowhere else.
#pragma once

#include "absl/status/status.h"
#include "coordinator/registry.h"
#include "coordinator/router.h"
#include "grpcpp/grpcpp.h"
#include "strata/v1/coordinator.grpc.pb.h"

namespace strata::coordinator {

class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  // `registry` must outlive the service.
  CoordinatorService(Registry* registry, RouterOptions router_options);

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;
  grpc::ServerUnaryReactor* GetRoute(grpc::CallbackServerContext* context,
                                     const v1::RouteRequest* request,
                                     v1::RouteResponse* response) override;
  grpc::ServerUnaryReactor* GetSwarm(grpc::CallbackServerContext* context,
                                     const v1::SwarmRequest* request,
                                     v1::SwarmSnapshot* response) override;
  grpc::ServerUnaryReactor* ReportFailure(grpc::CallbackServerContext* context,
                                          const v1::FailureReport* request,
                                          v1::FailureAck* response) override;

 private:
  Registry* const registry_;
  const RouterOptions router_options_;
};

}  // namespace strata::coordinator
