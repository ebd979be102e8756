// A node's Prometheus metrics (served at GET /metrics by NodeHttpServer when the node runs with
// an HTTP address).
//
//   strata_node_info{node_id, model_id, backend, version} 1
//   strata_node_up_state{state}                       1 for the node's state (joining, online, ...)
//   strata_node_first_layer / strata_node_last_layer  the span served, layers [first, last)
//   strata_node_layer_seconds{kind="decode"|"batched"} measured time of one row through one layer
//   strata_node_rows_total                             rows (token positions) computed
//   strata_node_batches_total                          batched forward passes (steps)
//   strata_node_batched_sessions_total                 sessions summed over batches
//   strata_node_verified_runs_total                    forwards verified here as the last hop
//   strata_node_rows_per_second                        over the last sampling second
//   strata_node_batch_seconds (histogram)              batch compute time, see below
//   strata_node_last_batch_seconds                     the latest batch's compute time
//   strata_node_queue_depth, strata_node_active_sessions
//   strata_node_kv_used_bytes, strata_node_kv_capacity_bytes
//   strata_node_errors_total                           ops that failed (the worker's count)
//   strata_node_op_errors_total{code}                  op errors sent to clients, by status code
//   strata_node_rpc_errors_total{method, code}         streams and calls that ended with an error
//
// The worker keeps counters, not per-batch callbacks, so the batch histogram is fed by a sampler
// that looks at the worker's stats every kSamplePeriod and observes the latest batch time once
// whenever batches ran since the last look (a sample of the batches, not each one). Errors by code
// come from a gRPC server interceptor that reads the responses as they are sent.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "node/worker.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace strata::node {

// What the metrics read from the node at scrape time.
struct NodeView {
  std::string node_id, model_id, backend, version;
  std::string state;  // "joining", "online", "draining"
  int first_layer = 0, last_layer = 0;
  double layer_ms = 0, batched_layer_ms = 0;
};

class NodeMetrics {
 public:
  static constexpr absl::Duration kSamplePeriod = absl::Milliseconds(20);

  // `stats` must outlive the metrics; `view` is called at every scrape (any thread).
  NodeMetrics(const WorkerStats* stats, std::function<NodeView()> view);
  ~NodeMetrics();  // stops the sampler

  NodeMetrics(const NodeMetrics&) = delete;
  NodeMetrics& operator=(const NodeMetrics&) = delete;

  // Starts the sampler thread (batch histogram, rows/s).
  void Start();

  // One batch's compute time; exact when the worker calls it (the sampler does otherwise).
  void ObserveBatch(absl::Duration compute);
  // An OpError sent to a client with `code` (the code it carries, a google.rpc.Code value).
  void CountOpError(absl::StatusCode code);
  // A call or stream of `method` ended with a non-OK status of `code`.
  void CountRpcError(const std::string& method, absl::StatusCode code);

  // The text exposition format (version 0.0.4).
  std::string Render();

  // A gRPC server interceptor factory that feeds CountOpError / CountRpcError. `metrics` must
  // outlive the server.
  static std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory(
      NodeMetrics* metrics);

 private:
  void SampleLoop();

  const WorkerStats* stats_;
  std::function<NodeView()> view_;

  prometheus::Registry registry_;
  prometheus::Histogram& batch_seconds_;
  prometheus::Family<prometheus::Counter>& op_errors_;
  prometheus::Family<prometheus::Counter>& rpc_errors_;
  std::atomic<double> rows_per_s_{0};

  std::thread sampler_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata::node
