#include "coordinator/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "common/strings.h"

namespace strata::coordinator {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Plans tried while looking for alternates.
constexpr int kMaxAlternatePlans = 64;

struct Candidate {
  const v1::NodeStatus* status;
  int first;  // span clipped to the model
  int last;
  double row_layer_ms;  // layer_ms * (1 + queue_depth)
  bool banned;
};

struct PlannedHop {
  int node;  // index into candidates
  int first;
  int last;
};

struct PlannedRoute {
  std::vector<PlannedHop> hops;
  double cost = 0;
};

// The routable view of a snapshot plus the RTTs between its nodes.
class Graph {
 public:
  Graph(const v1::SwarmSnapshot& swarm, const RouterOptions& options) : options_(options) {
    num_layers_ = swarm.num_layers();
    const absl::Time now = absl::FromUnixMillis(swarm.unix_ms());
    for (const v1::NodeStatus& n : swarm.nodes()) {
      if (n.state() != v1::NODE_STATE_ONLINE) continue;
      Candidate c;
      c.status = &n;
      c.first = std::max(n.first_layer(), 0);
      c.last = std::min(n.last_layer(), num_layers_);
      if (c.first >= c.last) continue;
      double layer_ms = n.node().layer_ms();
      if (!(layer_ms > 0) || !std::isfinite(layer_ms)) layer_ms = options.default_layer_ms;
      c.row_layer_ms = layer_ms * (1 + std::max(n.load().queue_depth(), 0));
      c.banned = absl::FromUnixMillis(n.banned_until_unix_ms()) > now;
      index_[n.node().node_id()] = static_cast<int>(candidates_.size());
      candidates_.push_back(c);
    }
    for (int from = 0; from < static_cast<int>(candidates_.size()); ++from) {
      for (const v1::PeerRtt& rtt : candidates_[from].status->rtts()) {
        auto to = index_.find(rtt.node_id());
        if (to == index_.end() || !(rtt.rtt_ms() >= 0) || !std::isfinite(rtt.rtt_ms())) continue;
        reported_[{from, to->second}] = rtt.rtt_ms();
      }
    }
  }

  int num_layers() const { return num_layers_; }
  int size() const { return static_cast<int>(candidates_.size()); }
  const Candidate& node(int i) const { return candidates_[i]; }

  // One-way latency from node `from` (-1: the client) to node `to`, ms.
  double Latency(int from, int to) const {
    if (from < 0) return options_.default_latency_ms;
    if (auto it = reported_.find({from, to}); it != reported_.end()) return it->second / 2;
    if (auto it = reported_.find({to, from}); it != reported_.end()) return it->second / 2;
    return options_.default_latency_ms;
  }

  double EdgeCost(int from, int to, int layers) const {
    return Latency(from, to) + layers * candidates_[to].row_layer_ms + options_.hop_overhead_ms;
  }

  double RouteCost(const std::vector<PlannedHop>& hops) const {
    double cost = 0;
    int prev = -1;
    for (const PlannedHop& h : hops) {
      cost += EdgeCost(prev, h.node, h.last - h.first);
      prev = h.node;
    }
    return cost + options_.default_latency_ms;  // back to the client
  }

 private:
  const RouterOptions& options_;
  int num_layers_ = 0;
  std::vector<Candidate> candidates_;
  absl::flat_hash_map<std::string, int> index_;
  absl::flat_hash_map<std::pair<int, int>, double> reported_;
};

// Folds a node's second visit into its first hop (see router.h) until every node appears once.
void FoldRevisits(std::vector<PlannedHop>& hops) {
  for (size_t i = 0; i < hops.size(); ++i) {
    for (size_t j = hops.size(); j-- > i + 1;) {
      if (hops[j].node == hops[i].node) {
        hops[i].last = hops[j].last;
        hops.erase(hops.begin() + i + 1, hops.begin() + j + 1);
        break;
      }
    }
  }
}

// Dijkstra over states (boundary, previous node). `usable[i]` says whether candidate i may be used.
std::optional<PlannedRoute> ShortestRoute(const Graph& g,
                                          int start,
                                          const std::vector<bool>& usable) {
  const int n = g.size();
  const int layers = g.num_layers();
  const int width = n + 1;  // previous node -1..n-1
  auto state = [width](int boundary, int prev) { return boundary * width + prev + 1; };
  std::vector<double> dist((layers + 1) * width, kInf);
  std::vector<int> parent(dist.size(), -1);
  using Entry = std::pair<double, int>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> queue;
  dist[state(start, -1)] = 0;
  queue.push({0.0, state(start, -1)});
  int goal = -1;
  while (!queue.empty()) {
    const auto [d, s] = queue.top();
    queue.pop();
    if (d > dist[s]) continue;
    const int a = s / width;
    const int prev = s % width - 1;
    if (a == layers) {
      goal = s;
      break;
    }
    for (int j = 0; j < n; ++j) {
      const Candidate& c = g.node(j);
      if (j == prev || !usable[j] || a < c.first || a >= c.last) continue;
      for (int b = a + 1; b <= c.last; ++b) {
        const int t = state(b, j);
        const double nd = d + g.EdgeCost(prev, j, b - a);
        if (nd < dist[t]) {
          dist[t] = nd;
          parent[t] = s;
          queue.push({nd, t});
        }
      }
    }
  }
  if (goal < 0) return std::nullopt;
  PlannedRoute route;
  for (int s = goal; parent[s] >= 0; s = parent[s]) {
    route.hops.push_back({s % width - 1, parent[s] / width, s / width});
  }
  std::reverse(route.hops.begin(), route.hops.end());
  FoldRevisits(route.hops);
  route.cost = g.RouteCost(route.hops);
  return route;
}

std::string RouteKey(const Graph& g, const PlannedRoute& r) {
  std::string key;
  for (const PlannedHop& h : r.hops) {
    key += StrCat(g.node(h.node).status->node().node_id(), "[", h.first, ",", h.last, ")/");
  }
  return key;
}

// Re-plans with the nodes of found routes excluded, breadth first, until `want` distinct routes
// besides `best` are found or the plan budget is spent.
std::vector<PlannedRoute> FindAlternates(const Graph& g,
                                         int start,
                                         const std::vector<bool>& usable,
                                         const PlannedRoute& best,
                                         int want) {
  std::vector<PlannedRoute> found;
  if (want <= 0) return found;
  std::set<std::string> seen = {RouteKey(g, best)};
  std::set<std::vector<int>> tried;
  std::vector<std::vector<int>> level;
  auto expand = [&](const PlannedRoute& r,
                    const std::vector<int>& excluded,
                    std::vector<std::vector<int>>& next) {
    for (const PlannedHop& h : r.hops) {
      std::vector<int> e = excluded;
      e.push_back(h.node);
      std::sort(e.begin(), e.end());
      e.erase(std::unique(e.begin(), e.end()), e.end());
      if (tried.insert(e).second) next.push_back(std::move(e));
    }
  };
  expand(best, {}, level);
  int plans = 0;
  while (!level.empty() && static_cast<int>(found.size()) < want && plans < kMaxAlternatePlans) {
    std::vector<std::vector<int>> next;
    for (const std::vector<int>& excluded : level) {
      if (plans++ >= kMaxAlternatePlans) break;
      std::vector<bool> u = usable;
      for (int i : excluded) u[i] = false;
      std::optional<PlannedRoute> r = ShortestRoute(g, start, u);
      if (!r) continue;
      if (seen.insert(RouteKey(g, *r)).second) found.push_back(*r);
      expand(*r, excluded, next);
    }
    level = std::move(next);
  }
  std::stable_sort(found.begin(), found.end(), [](const PlannedRoute& a, const PlannedRoute& b) {
    return a.cost < b.cost;
  });
  if (static_cast<int>(found.size()) > want) found.resize(want);
  return found;
}

v1::Route ToProto(const Graph& g, const PlannedRoute& r) {
  v1::Route route;
  for (const PlannedHop& h : r.hops) {
    v1::Hop* hop = route.add_hops();
    hop->set_node_id(g.node(h.node).status->node().node_id());
    hop->set_address(g.node(h.node).status->node().address());
    hop->set_first_layer(h.first);
    hop->set_last_layer(h.last);
  }
  route.set_estimated_step_ms(r.cost);
  return route;
}

// "layer 3", "layers 10-14", "layers 3, 10-14".
std::string LayerList(const std::vector<int>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += i == j ? StrCat(layers[i]) : StrCat(layers[i], "-", layers[j]);
    i = j + 1;
  }
  return StrCat(layers.size() == 1 ? "layer " : "layers ", out);
}

// Why no route exists: the layers no usable node serves, and the members that serve them but
// may not be used.
absl::Status NoRoute(const v1::SwarmSnapshot& swarm,
                     const Graph& g,
                     int start,
                     const std::vector<bool>& usable,
                     const absl::flat_hash_set<std::string>& excluded) {
  std::vector<int> gaps;
  for (int layer = start; layer < g.num_layers(); ++layer) {
    bool served = false;
    for (int i = 0; i < g.size() && !served; ++i) {
      served = usable[i] && g.node(i).first <= layer && layer < g.node(i).last;
    }
    if (!served) gaps.push_back(layer);
  }
  std::vector<std::string> why;
  const absl::Time now = absl::FromUnixMillis(swarm.unix_ms());
  for (const v1::NodeStatus& n : swarm.nodes()) {
    const bool covers_gap = std::any_of(gaps.begin(), gaps.end(), [&](int layer) {
      return n.first_layer() <= layer && layer < n.last_layer();
    });
    if (!covers_gap || why.size() >= 4) continue;
    const std::string& id = n.node().node_id();
    if (excluded.contains(id)) {
      why.push_back(StrCat(id, " is excluded"));
    } else if (n.state() != v1::NODE_STATE_ONLINE) {
      why.push_back(
          StrCat(id, " is ", n.state() == v1::NODE_STATE_JOINING ? "joining" : "draining"));
    } else if (absl::FromUnixMillis(n.banned_until_unix_ms()) > now) {
      why.push_back(StrCat(id, " is banned after failures"));
    }
  }
  std::string message = StrCat("no route: ",
                               LayerList(gaps),
                               gaps.size() == 1 ? " is" : " are",
                               " not served by any available node");
  if (!why.empty()) {
    message += " (";
    for (size_t i = 0; i < why.size(); ++i) message += StrCat(i ? ", " : "", why[i]);
    message += ")";
  }
  return absl::UnavailableError(message);
}

}  // namespace

absl::StatusOr<v1::RouteResponse> PlanRoute(const v1::SwarmSnapshot& swarm,
                                            const v1::RouteRequest& request,
                                            const RouterOptions& options) {
  if (swarm.num_layers() <= 0) return absl::UnavailableError("no route: the swarm has no nodes");
  if (!request.model_id().empty() && request.model_id() != swarm.model_id()) {
    return absl::FailedPreconditionError(
        StrCat("this swarm runs model '", swarm.model_id(), "', not '", request.model_id(), "'"));
  }
  const int start = request.start_layer();
  if (start < 0 || start >= swarm.num_layers()) {
    return absl::InvalidArgumentError(StrCat(
        "start_layer ", start, " is outside the model's [0, ", swarm.num_layers(), ") layers"));
  }
  if (request.alternates() < 0) {
    return absl::InvalidArgumentError(StrCat("alternates is negative: ", request.alternates()));
  }

  const Graph g(swarm, options);
  const absl::flat_hash_set<std::string> excluded(request.exclude_node_ids().begin(),
                                                  request.exclude_node_ids().end());
  std::vector<bool> usable(g.size());
  for (int i = 0; i < g.size(); ++i) {
    usable[i] = !g.node(i).banned && !excluded.contains(g.node(i).status->node().node_id());
  }
  std::optional<PlannedRoute> best = ShortestRoute(g, start, usable);
  if (!best && options.banned_fallback) {
    std::vector<bool> with_banned(g.size());
    for (int i = 0; i < g.size(); ++i) {
      with_banned[i] = !excluded.contains(g.node(i).status->node().node_id());
    }
    best = ShortestRoute(g, start, with_banned);
    if (best) usable = std::move(with_banned);
  }
  if (!best) return NoRoute(swarm, g, start, usable, excluded);

  v1::RouteResponse response;
  response.set_num_layers(swarm.num_layers());
  *response.mutable_route() = ToProto(g, *best);
  const int want = std::min(request.alternates(), options.max_alternates);
  for (const PlannedRoute& r : FindAlternates(g, start, usable, *best, want)) {
    *response.add_alternates() = ToProto(g, r);
  }
  return response;
}

}  // namespace strata::coordinator
