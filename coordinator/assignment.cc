#include "coordinator/assignment.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/strings.h"

namespace strata::coordinator {
namespace {

// Throughputs are sums of doubles; sums of the same terms in another order may differ in the
// last bits. Such values count as equal so that ties resolve by start layer, not by rounding.
int CompareThroughput(double a, double b) {
  const double tolerance = 1e-9 * std::max({1.0, std::fabs(a), std::fabs(b)});
  if (std::fabs(a - b) <= tolerance) return 0;
  return a < b ? -1 : 1;
}

// -1, 0 or 1 as `a` is lexicographically less than, equal to or greater than `b`.
int CompareSorted(const std::vector<double>& a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (int c = CompareThroughput(a[i], b[i]); c != 0) return c;
  }
  return a.size() == b.size() ? 0 : (a.size() < b.size() ? -1 : 1);
}

bool Counts(v1::NodeState state) {
  return state == v1::NODE_STATE_JOINING || state == v1::NODE_STATE_ONLINE;
}

}  // namespace

double NodeThroughput(double layer_ms, int span_layers) {
  if (span_layers <= 0) return 0;
  if (!(layer_ms > 0) || !std::isfinite(layer_ms)) layer_ms = kDefaultLayerMs;
  return 1000.0 / (layer_ms * span_layers);
}

std::vector<double> LayerThroughput(const v1::SwarmSnapshot& swarm) {
  const int num_layers = std::clamp(swarm.num_layers(), 0, kMaxModelLayers);
  std::vector<double> t(num_layers, 0.0);
  for (const v1::NodeStatus& n : swarm.nodes()) {
    if (!Counts(n.state())) continue;
    const int first = std::max(n.first_layer(), 0);
    const int last = std::min(n.last_layer(), num_layers);
    for (int b = first; b < last; ++b) t[b] += n.throughput();
  }
  return t;
}

int BestWindowStart(std::span<const double> throughput, int k) {
  const int n = static_cast<int>(throughput.size());
  int best_start = 0;
  std::vector<double> best, window;
  for (int start = 0; start + k <= n; ++start) {
    window.assign(throughput.begin() + start, throughput.begin() + start + k);
    std::sort(window.begin(), window.end());
    if (start == 0 || CompareSorted(window, best) < 0) {
      best_start = start;
      best.swap(window);
    }
  }
  return best_start;
}

absl::StatusOr<LayerRange> ChooseSpan(const v1::SwarmSnapshot& swarm,
                                      const v1::JoinRequest& request) {
  const int num_layers = swarm.num_layers();
  if (num_layers <= 0 || num_layers > kMaxModelLayers) {
    return absl::InvalidArgumentError(
        StrCat("the model must have 1..", kMaxModelLayers, " layers, not ", num_layers));
  }
  const int max_layers = request.node().max_layers();
  if (request.auto_span()) {
    const int k = max_layers > 0 ? std::min(max_layers, num_layers) : num_layers;
    const int start = BestWindowStart(LayerThroughput(swarm), k);
    return LayerRange{start, start + k};
  }
  const LayerRange span{request.first_layer(), request.last_layer()};
  if (span.first_layer < 0 || span.last_layer > num_layers || span.size() <= 0) {
    return absl::InvalidArgumentError(StrCat("span [",
                                             span.first_layer,
                                             ", ",
                                             span.last_layer,
                                             ") is not a non-empty range inside the model's [0, ",
                                             num_layers,
                                             ") layers"));
  }
  if (max_layers > 0 && span.size() > max_layers) {
    return absl::InvalidArgumentError(StrCat("span [",
                                             span.first_layer,
                                             ", ",
                                             span.last_layer,
                                             ") has ",
                                             span.size(),
                                             " layers, more than the node's max_layers ",
                                             max_layers));
  }
  return span;
}

std::optional<LayerRange> PlanMove(const v1::SwarmSnapshot& swarm,
                                   const std::string& node_id,
                                   const std::vector<std::pair<std::string, LayerRange>>& pending,
                                   const MoveOptions& options) {
  const int n = swarm.num_layers();
  if (n <= 0) return std::nullopt;
  // The swarm as it will be once the ordered moves are done, without the node considered.
  v1::SwarmSnapshot without = swarm;
  without.clear_nodes();
  const v1::NodeStatus* me = nullptr;
  for (const v1::NodeStatus& node : swarm.nodes()) {
    if (node.node().node_id() == node_id) {
      me = &node;
      continue;
    }
    v1::NodeStatus copy = node;
    for (const auto& [id, target] : pending) {
      if (id == node.node().node_id()) {
        copy.set_first_layer(target.first_layer);
        copy.set_last_layer(target.last_layer);
        copy.set_throughput(NodeThroughput(node.node().layer_ms(), target.size()));
      }
    }
    *without.add_nodes() = std::move(copy);
  }
  if (me == nullptr || me->state() != v1::NODE_STATE_ONLINE || !me->node().movable()) {
    return std::nullopt;
  }
  const LayerRange current{me->first_layer(), me->last_layer()};
  std::vector<double> t_without = LayerThroughput(without);
  // A node that alone serves some of its layers stays: moving would open a gap.
  for (int b = std::max(0, current.first_layer); b < std::min(n, current.last_layer); ++b) {
    if (t_without[b] <= 0) return std::nullopt;
  }
  int k = me->node().max_layers() > 0 ? std::min(me->node().max_layers(), n) : n;
  k = std::max(1, k);
  const int start = BestWindowStart(t_without, k);
  const LayerRange target{start, start + k};
  if (target == current) return std::nullopt;
  std::vector<double> t_now = t_without;
  const double mine_now = NodeThroughput(me->node().layer_ms(), current.size());
  for (int b = std::max(0, current.first_layer); b < std::min(n, current.last_layer); ++b) {
    t_now[b] += mine_now;
  }
  const bool gaps = std::any_of(t_now.begin(), t_now.end(), [](double x) { return x <= 0; });
  if (gaps) return target;  // repair: the best window without us contains the gap
  std::vector<double> t_after = t_without;
  const double mine_after = NodeThroughput(me->node().layer_ms(), k);
  for (int b = target.first_layer; b < target.last_layer; ++b) t_after[b] += mine_after;
  const double before = *std::min_element(t_now.begin(), t_now.end());
  const double after = *std::min_element(t_after.begin(), t_after.end());
  if (options.balance_quality > 0 && after > before / options.balance_quality) return target;
  return std::nullopt;
}

}  // namespace strata::coordinator
