#include "coordinator/service.h"

#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "coordinator/metrics.h"

namespace strata::coordinator {
namespace {

// Finishes a unary call with `result`'s status, moving its value into `*response` when OK.
template <typename T>
grpc::ServerUnaryReactor* FinishWith(grpc::CallbackServerContext* context,
                                     absl::StatusOr<T> result,
                                     T* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (result.ok()) *response = *std::move(result);
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

grpc::ServerUnaryReactor* FinishWith(grpc::CallbackServerContext* context,
                                     const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

CoordinatorService::CoordinatorService(Registry* registry, RouterOptions router_options)
    : registry_(registry), router_options_(router_options) {}

grpc::ServerUnaryReactor* CoordinatorService::Join(grpc::CallbackServerContext* context,
                                                   const v1::JoinRequest* request,
                                                   v1::JoinResponse* response) {
  return FinishWith(context, registry_->Join(*request), response);
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* context,
                                                        const v1::HeartbeatRequest* request,
                                                        v1::HeartbeatResponse* response) {
  return FinishWith(context, registry_->Heartbeat(*request), response);
}

grpc::ServerUnaryReactor* CoordinatorService::Leave(grpc::CallbackServerContext* context,
                                                    const v1::LeaveRequest* request,
                                                    v1::LeaveResponse* response) {
  return FinishWith(context, registry_->Leave(*request));
}

grpc::ServerUnaryReactor* CoordinatorService::GetRoute(grpc::CallbackServerContext* context,
                                                       const v1::RouteRequest* request,
                                                       v1::RouteResponse* response) {
  // The snapshot is copied under the registry's lock; planning runs outside it.
  const absl::Time start = absl::Now();
  auto route = PlanRoute(registry_->Snapshot(/*with_events=*/false), *request, router_options_);
  CoordinatorMetrics::Global().ObserveRoutePlan("grpc", absl::Now() - start, route.status().code());
  return FinishWith(context, std::move(route), response);
}

grpc::ServerUnaryReactor* CoordinatorService::GetSwarm(grpc::CallbackServerContext* context,
                                                       const v1::SwarmRequest* request,
                                                       v1::SwarmSnapshot* response) {
  *response = registry_->Snapshot();
  return FinishWith(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CoordinatorService::ReportFailure(grpc::CallbackServerContext* context,
                                                            const v1::FailureReport* request,
                                                            v1::FailureAck* response) {
  return FinishWith(context, registry_->ReportFailure(*request));
}

}  // namespace strata::coordinator
