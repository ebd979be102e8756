// Routing: the cheapest chain of nodes that covers layers [start_layer, num_layers).
//
// PlanRoute is a pure function of a swarm snapshot. It runs Dijkstra over layer boundaries
// start..L: a node serving [s, e) offers an edge a -> b for every s <= a < b <= e (a hop may use
// part of a span). The search state is (boundary, node of the previous hop), because reaching a
// node costs the latency from the previous hop:
//
//   edge cost (ms) = latency + (b - a) * layer_ms * (1 + queue_depth) + hop_overhead_ms
//   latency        = RTT/2 from the previous hop to the node, as the previous hop reported it in
//                    its heartbeats (else as the node reported its RTT to the previous hop), else
//                    default_latency_ms; the first hop always uses default_latency_ms
//
// The per-hop overhead makes fewer hops win ties. Unlike Petals' cost, the compute term grows with
// the node's queue, so load spreads over replicas. Routable nodes are ONLINE, not banned (see
// NodeStatus.banned_until_unix_ms vs the snapshot's unix_ms) and not in exclude_node_ids.
//
// A route uses each node at most once (a node opens one session per route, with one layer
// range); if the shortest path leaves a node's span and comes back, the hops in between are
// folded into that node's hop, which it can serve because spans are contiguous.
//
// Alternates: the best route is re-planned with each of its nodes excluded in turn (then with
// pairs, while fewer alternates than asked were found); distinct routes, sorted by cost.
#pragma once

#include "absl/status/statusor.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator {

struct RouterOptions {
  // One-way latency (RTT/2) assumed where no RTT is known, ms. Also used for the client -> first
  // hop and last hop -> client legs.
  double default_latency_ms = 2.0;
  // Added per hop, ms: serialization, scheduling; makes fewer hops win ties.
  double hop_overhead_ms = 0.3;
  // Assumed per-layer time of nodes that reported none, ms.
  double default_layer_ms = 1.0;
  // Most alternates returned, whatever the request asks.
  int max_alternates = 8;
  // When no route avoids banned nodes, plan again with them allowed (Petals does the same when
  // every server of a block is banned): a stale ban must not take the whole swarm down.
  bool banned_fallback = true;
};

// The best route for `request` over `swarm`, with up to request.alternates() alternates, each with
// estimated_step_ms = sum of edge costs + default_latency_ms for the way back to the client.
// Errors: INVALID_ARGUMENT (start_layer outside [0, num_layers), negative alternates),
// FAILED_PRECONDITION (request.model_id names another model), UNAVAILABLE (empty swarm, or
// layers no routable node serves; the message names them, e.g. "no route: layers 10-14 are not
// served by any available node").
absl::StatusOr<v1::RouteResponse> PlanRoute(const v1::SwarmSnapshot& swarm,
                                            const v1::RouteRequest& request,
                                            const RouterOptions& options = {});

}  // namespace strata::coordinator
