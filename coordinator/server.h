// A running coordinator: the Registry, the gRPC Coordinator service (plus the standard
// grpc.health.v1 health service) and, optionally, the HTTP endpoint. Used by
// `strata coordinator` and by in-process tests.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "coordinator/http.h"
#include "coordinator/registry.h"
#include "coordinator/router.h"
#include "coordinator/service.h"
#include "grpcpp/grpcpp.h"

namespace strata::coordinator {

struct HostPort {
  std::string host;  // without brackets, e.g. "127.0.0.1", "::1", "localhost"
  int port = 0;

  // "host:port", with brackets around an IPv6 host.
  std::string ToString() const;
};

// Parses "HOST:PORT" or "[IPV6]:PORT" with a non-empty host and a port in 0..65535.
// INVALID_ARGUMENT otherwise, with a message naming the address.
absl::StatusOr<HostPort> ParseHostPort(const std::string& address);

// Why binding a TCP socket to `address` fails ("address already in use", "cannot resolve host
// ..."), found by trying it; OK when it can be bound.
absl::Status ProbeBind(const HostPort& address);

struct CoordinatorOptions {
  std::string grpc_address = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free port
  std::string http_address;                  // HOST:PORT, empty: no HTTP endpoint
  RegistryOptions registry;
  RouterOptions router;
  Clock* clock = Clock::Real();  // must outlive the server
};

class CoordinatorServer {
 public:
  // Binds and starts serving. Errors: INVALID_ARGUMENT (malformed address), UNAVAILABLE (cannot
  // bind, with the reason).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorOptions options);
  ~CoordinatorServer();  // Shutdown()s

  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  // The addresses actually bound (real ports); http_address() is null without HTTP.
  const HostPort& grpc_address() const { return grpc_address_; }
  const HostPort* http_address() const { return http_ ? &http_address_ : nullptr; }

  Registry& registry() { return *registry_; }

  // Stops the HTTP endpoint, then the gRPC server (running calls finish). Idempotent.
  void Shutdown();

 private:
  CoordinatorServer() = default;

  std::unique_ptr<Registry> registry_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<HttpServer> http_;
  HostPort grpc_address_;
  HostPort http_address_;
  bool shut_down_ = false;
};

}  // namespace strata::coordinator
