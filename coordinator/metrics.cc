#include "coordinator/metrics.h"

#include <algorithm>
#include <utility>

#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace strata::coordinator {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

const char* StateLabel(v1::NodeState state) {
  switch (state) {
    case v1::NODE_STATE_JOINING:
      return "joining";
    case v1::NODE_STATE_ONLINE:
      return "online";
    case v1::NODE_STATE_DRAINING:
      return "draining";
    default:
      return "unspecified";
  }
}

// Builds the families derived from a snapshot.
class SnapshotFamilies {
 public:
  MetricFamily& Family(const std::string& name, const std::string& help, MetricType type) {
    families_.push_back({name, help, type, {}});
    return families_.back();
  }
  static void Add(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
    ClientMetric m;
    m.label = std::move(labels);
    if (f.type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    f.metric.push_back(std::move(m));
  }
  std::vector<MetricFamily> Take() { return std::move(families_); }

 private:
  std::vector<MetricFamily> families_;
};

std::vector<MetricFamily> SwarmFamilies(const v1::SwarmSnapshot& swarm) {
  SnapshotFamilies out;
  const SwarmSample s = SampleSwarm(swarm);
  using L = std::vector<ClientMetric::Label>;
  auto gauge = [&](const char* name, const char* help, double value) {
    SnapshotFamilies::Add(out.Family(name, help, MetricType::Gauge), {}, value);
  };
  SnapshotFamilies::Add(
      out.Family("strata_swarm_info", "The swarm's model (value 1)", MetricType::Gauge),
      L{{"model_id", swarm.model_id()}},
      1);
  gauge("strata_swarm_layers", "Layers in the swarm's model", swarm.num_layers());
  gauge("strata_swarm_uncovered_layers",
        "Layers no joining or online node serves",
        swarm.uncovered_layers_size());
  gauge("strata_swarm_tokens_per_second",
        "Tokens through the whole model per second (node rows/s weighted by span length)",
        s.tokens_per_s);
  gauge("strata_swarm_sessions",
        "Client sessions (sessions of the nodes serving layer 0)",
        s.sessions);

  MetricFamily& by_state =
      out.Family("strata_swarm_nodes", "Member nodes by state", MetricType::Gauge);
  for (v1::NodeState st : {v1::NODE_STATE_JOINING,
                           v1::NODE_STATE_ONLINE,
                           v1::NODE_STATE_DRAINING,
                           v1::NODE_STATE_UNSPECIFIED}) {
    int count = 0;
    for (const v1::NodeStatus& n : swarm.nodes()) count += n.state() == st;
    SnapshotFamilies::Add(by_state, L{{"state", StateLabel(st)}}, count);
  }
  MetricFamily& layer_tp = out.Family("strata_swarm_layer_throughput_tokens_per_second",
                                      "Throughput offered for each layer, summed over its nodes",
                                      MetricType::Gauge);
  for (const v1::LayerCoverage& c : swarm.coverage()) {
    SnapshotFamilies::Add(layer_tp, L{{"layer", std::to_string(c.layer())}}, c.throughput());
  }

  struct PerNode {
    const char* name;
    const char* help;
    MetricType type;
    double (*value)(const v1::NodeStatus&, int64_t now_ms);
  };
  static const PerNode kPerNode[] = {
      {"strata_swarm_node_first_layer",
       "First layer of the node's span",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.first_layer()); }},
      {"strata_swarm_node_last_layer",
       "One past the last layer of the node's span",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.last_layer()); }},
      {"strata_swarm_node_offered_tokens_per_second",
       "Tokens/s the node offers each layer of its span (measured at start)",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return n.throughput(); }},
      {"strata_swarm_node_rows_per_second",
       "Rows computed per second (last heartbeat)",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return n.load().tokens_per_s(); }},
      {"strata_swarm_node_active_sessions",
       "Open sessions on the node",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().active_sessions()); }},
      {"strata_swarm_node_queue_depth",
       "Ops waiting for the node's worker",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().queue_depth()); }},
      {"strata_swarm_node_step_seconds",
       "The node's latest batch compute time",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return n.load().step_ms_p50() / 1000.0; }},
      {"strata_swarm_node_kv_used_bytes",
       "KV cache bytes in use",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().kv_used_bytes()); }},
      {"strata_swarm_node_kv_capacity_bytes",
       "KV cache capacity",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().kv_capacity_bytes()); }},
      {"strata_swarm_node_rows_total",
       "Rows the node computed since it started",
       MetricType::Counter,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().total_rows()); }},
      {"strata_swarm_node_errors_total",
       "Ops that failed on the node since it started",
       MetricType::Counter,
       [](const v1::NodeStatus& n, int64_t) { return double(n.load().errors()); }},
      {"strata_swarm_node_failure_reports",
       "Failure reports since the node was last clean",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t) { return double(n.failures()); }},
      {"strata_swarm_node_banned",
       "1 while clients' failure reports ban the node from routes",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t now) {
         return n.banned_until_unix_ms() > now ? 1.0 : 0.0;
       }},
      {"strata_swarm_node_heartbeat_age_seconds",
       "Time since the node's last heartbeat",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t now) {
         return (now - n.last_heartbeat_unix_ms()) / 1000.0;
       }},
      {"strata_swarm_node_uptime_seconds",
       "Time since the node joined",
       MetricType::Gauge,
       [](const v1::NodeStatus& n, int64_t now) { return (now - n.joined_unix_ms()) / 1000.0; }},
  };
  MetricFamily& info = out.Family("strata_swarm_node_info",
                                  "A member node (value 1) with its address, state, backend and "
                                  "version",
                                  MetricType::Gauge);
  for (const v1::NodeStatus& n : swarm.nodes()) {
    SnapshotFamilies::Add(info,
                          L{{"node_id", n.node().node_id()},
                            {"address", n.node().address()},
                            {"state", StateLabel(n.state())},
                            {"backend", n.node().backend()},
                            {"version", n.node().version()}},
                          1);
  }
  for (const PerNode& p : kPerNode) {
    MetricFamily& f = out.Family(p.name, p.help, p.type);
    for (const v1::NodeStatus& n : swarm.nodes()) {
      SnapshotFamilies::Add(f, L{{"node_id", n.node().node_id()}}, p.value(n, swarm.unix_ms()));
    }
  }
  return out.Take();
}

bool SameEvent(const v1::SwarmEvent& a, const v1::SwarmEvent& b) {
  return a.unix_ms() == b.unix_ms() && a.kind() == b.kind() && a.node_id() == b.node_id() &&
         a.detail() == b.detail();
}

}  // namespace

SwarmSample SampleSwarm(const v1::SwarmSnapshot& swarm) {
  SwarmSample s;
  s.unix_ms = swarm.unix_ms();
  s.uncovered_layers = swarm.uncovered_layers_size();
  const int layers = std::max(1, swarm.num_layers());
  for (const v1::NodeStatus& n : swarm.nodes()) {
    const v1::NodeLoad& load = n.load();
    ++s.nodes;
    if (n.state() == v1::NODE_STATE_ONLINE) ++s.online;
    const int span = std::max(0, n.last_layer() - n.first_layer());
    s.node_rows_per_s += load.tokens_per_s();
    s.tokens_per_s += load.tokens_per_s() * span / layers;
    s.node_sessions += load.active_sessions();
    if (n.first_layer() == 0 && span > 0) s.sessions += load.active_sessions();
    s.queue_depth += load.queue_depth();
    s.kv_used_bytes += load.kv_used_bytes();
    s.kv_capacity_bytes += load.kv_capacity_bytes();
  }
  return s;
}

SwarmSample SwarmSampler::Next(const v1::SwarmSnapshot& swarm) {
  SwarmSample s = SampleSwarm(swarm);
  const double seconds = (swarm.unix_ms() - last_unix_ms_) / 1000.0;
  std::map<std::string, int64_t> rows;
  if (last_unix_ms_ > 0 && seconds > 0) {
    const int layers = std::max(1, swarm.num_layers());
    s.tokens_per_s = 0;
    s.node_rows_per_s = 0;
    for (const v1::NodeStatus& n : swarm.nodes()) {
      const int span = std::max(0, n.last_layer() - n.first_layer());
      double rate = n.load().tokens_per_s();
      auto it = last_rows_.find(n.node().node_id());
      if (it != last_rows_.end() && n.load().total_rows() >= it->second) {
        rate = (n.load().total_rows() - it->second) / seconds;
      } else if (it == last_rows_.end() && n.joined_unix_ms() >= last_unix_ms_) {
        // Joined since the previous sample: every row it counts was done in this interval (its
        // last heartbeat's rate would miss a burst that ended before that heartbeat).
        rate = n.load().total_rows() / seconds;
      }
      s.node_rows_per_s += rate;
      s.tokens_per_s += rate * span / layers;
    }
  }
  for (const v1::NodeStatus& n : swarm.nodes()) rows[n.node().node_id()] = n.load().total_rows();
  last_rows_ = std::move(rows);
  last_unix_ms_ = swarm.unix_ms();
  return s;
}

nlohmann::json SampleToJson(const SwarmSample& s) {
  return {{"unix_ms", s.unix_ms},
          {"tokens_per_s", s.tokens_per_s},
          {"node_rows_per_s", s.node_rows_per_s},
          {"sessions", s.sessions},
          {"node_sessions", s.node_sessions},
          {"nodes", s.nodes},
          {"online", s.online},
          {"queue_depth", s.queue_depth},
          {"kv_used_bytes", s.kv_used_bytes},
          {"kv_capacity_bytes", s.kv_capacity_bytes},
          {"uncovered_layers", s.uncovered_layers}};
}

void SwarmHistory::Add(const SwarmSample& sample) {
  absl::MutexLock lock(&mu_);
  samples_.push_back(sample);
  while (samples_.size() > capacity_) samples_.pop_front();
}

std::vector<SwarmSample> SwarmHistory::Since(int64_t since_unix_ms) const {
  absl::MutexLock lock(&mu_);
  std::vector<SwarmSample> out;
  for (const SwarmSample& s : samples_) {
    if (s.unix_ms > since_unix_ms) out.push_back(s);
  }
  return out;
}

CoordinatorMetrics& CoordinatorMetrics::Global() {
  static CoordinatorMetrics* metrics = new CoordinatorMetrics();
  return *metrics;
}

CoordinatorMetrics::CoordinatorMetrics()
    : route_plan_seconds_(prometheus::BuildHistogram()
                              .Name("strata_coordinator_route_plan_seconds")
                              .Help("Time to plan one route (PlanRoute over a snapshot)")
                              .Register(registry_)),
      route_plans_(prometheus::BuildCounter()
                       .Name("strata_coordinator_route_plans_total")
                       .Help("Route plans by source and outcome (a google.rpc code name)")
                       .Register(registry_)),
      events_(prometheus::BuildCounter()
                  .Name("strata_coordinator_events_total")
                  .Help("Swarm events by kind: join, leave, expire, failure (a client's "
                        "failure report), state (a node's state changed), move, rebalance")
                  .Register(registry_)),
      http_requests_(prometheus::BuildCounter()
                         .Name("strata_coordinator_http_requests_total")
                         .Help("HTTP requests by handler and status code")
                         .Register(registry_)) {
  // Series that should read 0 rather than be absent before the first occurrence.
  for (const char* kind : {"join", "leave", "expire", "failure", "move"}) {
    events_.Add({{"kind", kind}});
  }
}

void CoordinatorMetrics::ObserveRoutePlan(std::string_view source,
                                          absl::Duration took,
                                          absl::StatusCode code) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1};
  route_plan_seconds_.Add({{"source", std::string(source)}}, kBuckets)
      .Observe(absl::ToDoubleSeconds(took));
  route_plans_.Add({{"source", std::string(source)}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void CoordinatorMetrics::CountEvent(const std::string& kind) {
  // Kinds come from the registry's fixed vocabulary; cap the length anyway.
  events_.Add({{"kind", kind.substr(0, 32)}}).Increment();
}

void CoordinatorMetrics::CountHttpRequest(std::string_view handler, int status) {
  http_requests_.Add({{"handler", std::string(handler)}, {"code", std::to_string(status)}})
      .Increment();
}

std::string CoordinatorMetrics::Render(const v1::SwarmSnapshot& swarm) {
  std::vector<MetricFamily> families = registry_.Collect();
  for (MetricFamily& f : SwarmFamilies(swarm)) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

void EventCounter::Track(const v1::SwarmSnapshot& swarm) {
  const auto& events = swarm.events();
  int first_new = 0;
  if (seen_any_) {
    // Everything after the newest event counted before; all of them if it fell off the log.
    for (int i = events.size() - 1; i >= 0; --i) {
      if (SameEvent(events[i], last_)) {
        first_new = i + 1;
        break;
      }
    }
  }
  for (int i = first_new; i < events.size(); ++i) metrics_->CountEvent(events[i].kind());
  if (!events.empty()) {
    last_ = events[events.size() - 1];
    seen_any_ = true;
  }
}

}  // namespace strata::coordinator
