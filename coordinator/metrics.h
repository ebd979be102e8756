// The coordinator's operational numbers: Prometheus metrics (text exposition at GET /metrics) and
// the bounded history of swarm samples behind the dashboard's charts (GET /api/history).
//
// Two kinds of metrics:
//  - process counters and histograms kept in CoordinatorMetrics::Global(): route planning time
//    and outcome, swarm events by kind (joins, leaves, expiries, failure reports, moves), HTTP
//    requests by handler and status;
//  - gauges derived from a registry snapshot at scrape time (strata_swarm_*): nodes by state,
//    coverage, the swarm's token rate, sessions, and per-node load labelled by node_id. They are
//    computed fresh on every scrape, so a node that left has no stale series.
//
// Token rates: a node reports rows/s (one row = one token position through its span). A token
// decoded by the swarm passes every layer once, so the whole-model rate is
// sum_n rows_per_s(n) x span_len(n) / num_layers. Sessions: every client session has exactly one
// hop holding layer 0, so client sessions = the sessions of the nodes serving layer 0.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator {

// One point of the dashboard's charts.
struct SwarmSample {
  int64_t unix_ms = 0;
  double tokens_per_s = 0;     // tokens through the whole model per second (see above)
  double node_rows_per_s = 0;  // rows/s summed over nodes (a token counts once per hop)
  int sessions = 0;            // client sessions (sessions of the nodes serving layer 0)
  int node_sessions = 0;       // sessions summed over nodes (a session counts once per hop)
  int nodes = 0;
  int online = 0;
  int queue_depth = 0;  // summed over nodes
  int64_t kv_used_bytes = 0;
  int64_t kv_capacity_bytes = 0;
  int uncovered_layers = 0;
};

// A sample from one snapshot alone: rates are the nodes' own (rows/s over their last heartbeat
// interval).
SwarmSample SampleSwarm(const v1::SwarmSnapshot& swarm);

// Samples successive snapshots; rates come from the growth of each node's total_rows since the
// previous snapshot, so a burst shorter than a heartbeat interval is not missed. A node seen for
// the first time contributes all its rows when it joined since the previous snapshot, else (or
// when restarted: its count went down) its own heartbeat rate.
class SwarmSampler {
 public:
  SwarmSample Next(const v1::SwarmSnapshot& swarm);

 private:
  int64_t last_unix_ms_ = 0;
  std::map<std::string, int64_t> last_rows_;  // node id -> total_rows
};

// {"unix_ms", "tokens_per_s", "node_rows_per_s", "sessions", "node_sessions", "nodes", "online",
//  "queue_depth", "kv_used_bytes", "kv_capacity_bytes", "uncovered_layers"}
nlohmann::json SampleToJson(const SwarmSample& sample);

// A bounded ring of samples, oldest dropped first. Thread-safe.
class SwarmHistory {
 public:
  explicit SwarmHistory(size_t capacity) : capacity_(capacity) {}
  void Add(const SwarmSample& sample);
  // Samples with unix_ms > since_unix_ms, oldest first.
  std::vector<SwarmSample> Since(int64_t since_unix_ms) const;
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<SwarmSample> samples_ ABSL_GUARDED_BY(mu_);
};

class CoordinatorMetrics {
 public:
  // The process's metrics (several coordinators in one process, as in tests, share them).
  static CoordinatorMetrics& Global();
  CoordinatorMetrics();

  // One PlanRoute call: `source` is "grpc" (GetRoute) or "http" (/api/route).
  void ObserveRoutePlan(std::string_view source, absl::Duration took, absl::StatusCode code);
  void CountEvent(const std::string& kind);
  // `handler` must come from a fixed set (never a raw request path: bounded label values).
  void CountHttpRequest(std::string_view handler, int status);

  // The text exposition format (version 0.0.4): the counters above and the gauges of `swarm`.
  std::string Render(const v1::SwarmSnapshot& swarm);

 private:
  prometheus::Registry registry_;
  prometheus::Family<prometheus::Histogram>& route_plan_seconds_;
  prometheus::Family<prometheus::Counter>& route_plans_;
  prometheus::Family<prometheus::Counter>& events_;
  prometheus::Family<prometheus::Counter>& http_requests_;
};

// Counts the events of successive snapshots (the registry keeps a bounded log): each event is
// counted once, by kind, in CoordinatorMetrics. Not thread-safe; one per sampler.
class EventCounter {
 public:
  explicit EventCounter(CoordinatorMetrics* metrics) : metrics_(metrics) {}
  void Track(const v1::SwarmSnapshot& swarm);

 private:
  CoordinatorMetrics* metrics_;
  bool seen_any_ = false;
  v1::SwarmEvent last_;  // the newest event already counted
};

}  // namespace strata::coordinator
