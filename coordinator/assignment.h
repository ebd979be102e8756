// Span assignment: which layers a joining node should serve. Pure functions of a snapshot.
//
// The rule is Petals' `choose_best_blocks`: let T[b] be the summed throughput (tokens/s) of the
// JOINING and ONLINE nodes covering layer b; a node that can hold k layers takes the window of k
// consecutive layers whose throughputs, sorted ascending, are lexicographically smallest. A window
// containing an uncovered layer (T = 0) therefore beats any fully covered one, a window with two
// gaps beats one with a single gap, and among covered windows the weakest wins. Ties go to the
// lowest start layer.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator {

// Layers [first_layer, last_layer) of the model.
struct LayerRange {
  int first_layer = 0;
  int last_layer = 0;

  int size() const { return last_layer - first_layer; }
  friend bool operator==(const LayerRange&, const LayerRange&) = default;
};

// The most layers a swarm's model may have (bounds the work and memory of every layer-indexed
// computation on untrusted input).
inline constexpr int kMaxModelLayers = 1024;

// Tokens/s a node offers each layer of a span of `span_layers` layers when one layer costs
// `layer_ms` for one decode row: 1000 / (layer_ms * span_layers). A node with no measurement
// (layer_ms <= 0) is assumed to take kDefaultLayerMs.
inline constexpr double kDefaultLayerMs = 1.0;
double NodeThroughput(double layer_ms, int span_layers);

// T[b] for b in [0, swarm.num_layers()): summed `throughput` of JOINING/ONLINE nodes covering b.
// Nodes whose span falls outside the model are clipped.
std::vector<double> LayerThroughput(const v1::SwarmSnapshot& swarm);

// The start of the best window of `k` layers over `throughput` (see the file comment).
// Requires 1 <= k <= throughput.size().
int BestWindowStart(std::span<const double> throughput, int k);

// The span for `request` in `swarm` (whose model_id / num_layers the caller has already matched
// against the request; swarm.num_layers() must be > 0).
//  - auto_span: k = min(max_layers, num_layers), max_layers <= 0 meaning "no limit"; the best
//    window of k layers.
//  - fixed: [first_layer, last_layer) must be non-empty, inside [0, num_layers) and no longer than
//    max_layers (when set); else INVALID_ARGUMENT. Honoured as asked.
absl::StatusOr<LayerRange> ChooseSpan(const v1::SwarmSnapshot& swarm,
                                      const v1::JoinRequest& request);

// Moves of running nodes (their spans change without a restart).
struct MoveOptions {
  // Petals' balance quality: a node moves to rebalance only when that raises the weakest layer's
  // throughput by more than 1 / balance_quality (here: more than a third); 0: never (moves only
  // fill uncovered layers).
  double balance_quality = 0.75;
};

// Where node `node_id` (ONLINE, movable) should go, if anywhere. `pending` lists moves already
// ordered (node id -> target): they count as done. First repair: if some layer is served by
// nobody and the node is not the only server of any of its own layers, it takes the best window
// without itself (gaps first). Then rebalance: it moves when the weakest layer's throughput
// rises by more than 1 / balance_quality.
std::optional<LayerRange> PlanMove(const v1::SwarmSnapshot& swarm,
                                   const std::string& node_id,
                                   const std::vector<std::pair<std::string, LayerRange>>& pending,
                                   const MoveOptions& options = {});

}  // namespace strata::coordinator
