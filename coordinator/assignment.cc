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

}  // namespace strata::coordinator
