// A node's optional HTTP listener (cpp-httplib, on its own thread) for operators and scrapers:
//
//   GET /healthz   200 "ok\n" while the node serves (online); 503 "<state>\n" while it is joining
//                  (loading its span) or draining
//   GET /metrics   200 Prometheus text exposition (version 0.0.4), see node/metrics.h
//
// Handlers read atomics only; they never touch the worker's thread or the data path.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace strata::node {

struct NodeHttpHandlers {
  std::function<std::string()> metrics;  // the /metrics body
  std::function<std::string()> state;    // "online", "joining", "draining"
};

class NodeHttpServer {
 public:
  // Binds `address` (HOST:PORT or [IPV6]:PORT; port 0 picks a free port) and serves on a new
  // thread. UNAVAILABLE when it cannot bind, INVALID_ARGUMENT for a malformed address.
  static absl::StatusOr<std::unique_ptr<NodeHttpServer>> Start(const std::string& address,
                                                               NodeHttpHandlers handlers);
  ~NodeHttpServer();  // Stop()s

  // "HOST:PORT" with the port actually bound.
  const std::string& address() const;
  // Stops serving and joins the thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit NodeHttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::node
