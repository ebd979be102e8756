// The coordinator's HTTP endpoint (cpp-httplib, on its own thread): the dashboard, JSON views of
// the swarm for dashboards and scripts, and Prometheus metrics. Handlers only copy a registry
// snapshot (and plan a route); they never hold the registry's lock while writing a response.
// A sampler thread takes one snapshot a second for /api/history and the event counters.
//
//   GET /            200 the dashboard (HTML; its files are embedded in the binary)
//   GET /app.js, /style.css, /chart.js   the dashboard's script, style and Chart.js
//   GET /healthz     200 "ok\n"
//   GET /api/swarm   200 SwarmToJson(snapshot)
//   GET /api/route   200 RouteToJson(route) for the route a client would get now. Query
//                    parameters: start_layer (default 0), alternates (default 0), exclude
//                    (comma-separated node ids), model_id. Errors: 400 (INVALID_ARGUMENT,
//                    FAILED_PRECONDITION) or 503 (UNAVAILABLE, e.g. uncovered layers) with
//                    {"error": {"code": "UNAVAILABLE", "message": "no route: layers 10-14 ..."}};
//                    with errors=body the same error JSON comes with status 200 (for pollers,
//                    such as browsers, that log every non-2xx answer)
//   GET /api/history 200 history (below); since=UNIX_MS returns only later samples
//   GET /metrics     200 Prometheus text exposition (version 0.0.4), see metrics.h
//
// JSON shapes (times are Unix milliseconds, durations milliseconds, throughput tokens/s):
//
//   swarm = {
//     "model_id": str, "num_layers": int, "unix_ms": int,
//     "nodes": [{                              // ordered by (first_layer, id)
//       "id": str, "address": "host:port", "first_layer": int, "last_layer": int,
//       "state": "joining" | "online" | "draining" | "unspecified",
//       "backend": str, "version": str, "model_id": str, "max_layers": int,
//       "layer_ms": float, "batched_layer_ms": float, "throughput": float,
//       "kv_capacity_bytes": int,
//       "load": {"active_sessions": int, "queue_depth": int, "kv_used_bytes": int,
//                "kv_capacity_bytes": int, "tokens_per_s": float, "step_ms_p50": float,
//                "total_rows": int, "errors": int},
//       "rtts": [{"node_id": str, "rtt_ms": float}],
//       "joined_unix_ms": int, "last_heartbeat_unix_ms": int,
//       "uptime_ms": int, "heartbeat_age_ms": int,   // relative to the snapshot's unix_ms
//       "banned": bool, "banned_until_unix_ms": int, "failures": int
//     }],
//     "coverage": [{"layer": int, "node_ids": [str], "throughput": float}],  // every layer
//     "uncovered": [int],
//     "events": [{"unix_ms": int, "kind": str, "node_id": str, "detail": str}]  // oldest first
//   }
//
//   route = {
//     "num_layers": int,
//     "route": {"hops": [{"node_id": str, "address": str, "first_layer": int, "last_layer": int}],
//               "estimated_step_ms": float},
//     "alternates": [same shape as "route"]
//   }
//
//   history = {
//     "interval_ms": int, "capacity": int,   // one sample per interval, the newest `capacity`
//     "samples": [SampleToJson(sample)]      // oldest first; shape in metrics.h
//   }
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/registry.h"
#include "coordinator/router.h"
#include "nlohmann/json.hpp"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator {

nlohmann::json SwarmToJson(const v1::SwarmSnapshot& swarm);
nlohmann::json RouteToJson(const v1::RouteResponse& route);

class HttpServer {
 public:
  // Binds host:port (port 0: any free port) and serves on a new thread. `registry` must outlive
  // the server. Errors: UNAVAILABLE naming the address and the reason (e.g. address in use).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host,
                                                           int port,
                                                           Registry* registry,
                                                           RouterOptions router_options);
  ~HttpServer();  // Stop()s

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port.
  int port() const;
  // Stops accepting, finishes running requests and joins the thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::coordinator
