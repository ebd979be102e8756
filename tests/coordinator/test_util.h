// Builders for coordinator tests: snapshots with hand-placed nodes, and join requests.
#pragma once

#include <string>

#include "coordinator/assignment.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator::testkit {

inline constexpr const char* kModel = "smollm2-135m@b179c952";
inline constexpr int64_t kNowMs = 1'000'000;

inline v1::SwarmSnapshot EmptySwarm(int num_layers) {
  v1::SwarmSnapshot s;
  s.set_model_id(kModel);
  s.set_num_layers(num_layers);
  s.set_unix_ms(kNowMs);
  return s;
}

struct NodeSpec {
  std::string id;
  int first = 0;
  int last = 0;
  double layer_ms = 1.0;
  v1::NodeState state = v1::NODE_STATE_ONLINE;
  int queue_depth = 0;
};

// Adds a node as a registry snapshot would show it; returns it for further edits.
inline v1::NodeStatus* AddNode(v1::SwarmSnapshot& s, const NodeSpec& spec) {
  v1::NodeStatus* n = s.add_nodes();
  n->mutable_node()->set_node_id(spec.id);
  n->mutable_node()->set_address(spec.id + ".test:7000");
  n->mutable_node()->set_model_id(s.model_id());
  n->mutable_node()->set_num_layers(s.num_layers());
  n->mutable_node()->set_layer_ms(spec.layer_ms);
  n->set_state(spec.state);
  n->set_first_layer(spec.first);
  n->set_last_layer(spec.last);
  n->mutable_load()->set_queue_depth(spec.queue_depth);
  n->set_throughput(NodeThroughput(spec.layer_ms, spec.last - spec.first));
  return n;
}

inline v1::JoinRequest AutoJoin(const std::string& id,
                                const std::string& address,
                                int num_layers,
                                int max_layers,
                                double layer_ms = 1.0) {
  v1::JoinRequest r;
  r.set_protocol_version(v1::PROTOCOL_VERSION_1);
  v1::NodeDescriptor* d = r.mutable_node();
  d->set_node_id(id);
  d->set_address(address);
  d->set_model_id(kModel);
  d->set_num_layers(num_layers);
  d->set_max_layers(max_layers);
  d->set_backend("cpu/avx2");
  d->set_version("0.1.0");
  d->set_layer_ms(layer_ms);
  r.set_auto_span(true);
  return r;
}

inline v1::JoinRequest FixedJoin(const std::string& id,
                                 const std::string& address,
                                 int num_layers,
                                 int first,
                                 int last,
                                 double layer_ms = 1.0) {
  v1::JoinRequest r = AutoJoin(id, address, num_layers, /*max_layers=*/0, layer_ms);
  r.set_auto_span(false);
  r.set_first_layer(first);
  r.set_last_layer(last);
  return r;
}

// The hops of a route as "id[first,last)" joined by " ".
inline std::string Hops(const v1::Route& route) {
  std::string out;
  for (const v1::Hop& h : route.hops()) {
    if (!out.empty()) out += " ";
    out += h.node_id() + "[" + std::to_string(h.first_layer()) + "," +
           std::to_string(h.last_layer()) + ")";
  }
  return out;
}

}  // namespace strata::coordinator::testkit
