// A whole node: the gRPC server, the worker, and membership (join and heartbeats to every
// coordinator).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/llama.h"
#include "node/http_status.h"
#include "node/metrics.h"
#include "node/service.h"
#include "node/thread_set.h"
#include "node/worker.h"
#include "strata/v1/coordinator.grpc.pb.h"

namespace strata::node {

struct NodeOptions {
  std::string model_path;
  std::vector<std::string> coordinators;  // host:port of every coordinator (may be empty)
  std::string listen = "127.0.0.1:0";
  std::string advertise;  // address announced to coordinators; default: the bound address
  bool auto_span = true;  // let the coordinator choose the span
  int first_layer = 0;    // with auto_span = false
  int last_layer = 0;
  int max_layers = 0;          // most layers to hold with auto_span (0: all)
  std::string node_id;         // default: random
  std::string device = "cpu";  // "cpu" or "cuda:N" (builds with STRATA_CUDA)
  int threads = 0;             // CPU compute threads (0: all CPUs)
  WorkerOptions worker;
  // Hidden states to and from co-located CUDA nodes over NCCL (negotiated per push stream,
  // gRPC otherwise). False: gRPC only (`strata node --no-nccl`).
  bool nccl = true;
  // Most hand-off links (NCCL communicators) open at once, in and out; more stay on gRPC.
  int max_handoff_links = 8;
  // Replaces the NCCL hand-off (tests inject a fake transport here).
  std::shared_ptr<HandoffProvider> handoff;
  // HOST:PORT of an HTTP listener for /metrics (Prometheus) and /healthz; empty: none.
  std::string http;
  // Progress and status messages for the operator (stderr by default in the CLI).
  std::function<void(const std::string&)> log;
};

// Measured compute speed of this machine for the model.
struct Throughput {
  double layer_ms = 0;          // one decode row through one layer
  double batched_layer_ms = 0;  // per row, inside a batch of 16
};

// The backends a node runs its spans on: "cpu" always; "cuda:N" when built with STRATA_CUDA.
struct Backends {
  BackendFactory make;
  std::function<std::unique_ptr<model::KvPool>(size_t max_bytes)> kv_pool;
  std::string description;
};
absl::StatusOr<Backends> MakeBackends(const std::string& device,
                                      std::shared_ptr<const model::Model> model,
                                      int threads);

// The hand-off a node with `options` offers and accepts: NCCL on a CUDA device (builds with
// STRATA_CUDA, unless options.nccl is false), the injected provider, or none with the reason.
HandoffOptions MakeHandoff(const NodeOptions& options);

class NodeServer {
 public:
  // Binds, measures, joins, loads the span and starts serving. Errors: a bad model file, an
  // unusable address, a refused join (with the coordinator's message).
  static absl::StatusOr<std::unique_ptr<NodeServer>> Start(NodeOptions options);
  ~NodeServer();

  // Graceful leave: stops taking sessions, tells the coordinators (DRAINING) and every client
  // (Draining) so they move their sessions elsewhere, and waits until no session is left or
  // `timeout` passes. Shutdown() afterwards.
  void Drain(absl::Duration timeout);
  // Leaves the swarm and shuts down (sessions still open are closed with UNAVAILABLE).
  void Shutdown();
  void Wait();

  const std::string& node_id() const { return options_.node_id; }
  const std::string& address() const { return address_; }
  int first_layer() const { return worker_->first_layer(); }
  int last_layer() const { return worker_->last_layer(); }
  const WorkerStats& stats() const { return worker_->stats(); }
  const Throughput& throughput() const { return throughput_; }
  const model::Model& model() const { return *model_; }
  // The push streams this node has open to next hops and the transport each uses.
  std::vector<v1::DownstreamLinkInfo> links() const { return links_->Snapshot(); }
  // Hand-off links (NCCL communicators) open or being set up, in and out.
  int handoff_links_open() const { return handoff_budget_ ? handoff_budget_->open() : 0; }
  // "links nccl 1, grpc 2", or "" when none is open.
  std::string links_summary() const { return links_->Summary(); }
  // The bound HTTP address (HOST:PORT) when NodeOptions::http was set, else "".
  std::string http_address() const { return http_ ? http_->address() : std::string(); }

 private:
  NodeServer() = default;

  // Start's steps, in order. Open takes `options` (with defaults filled in), opens the model and
  // makes the backends.
  absl::Status Open(NodeOptions options);
  // Makes the worker, the metrics (with an HTTP address) and the service.
  void MakeParts();
  // Binds the gRPC server and starts serving.
  absl::Status Listen();
  // Starts the metrics sampler and the HTTP listener (with an HTTP address).
  absl::Status StartHttp();
  // Measures this machine's speed on one layer.
  absl::Status Measure();
  // Joins the coordinators (when there are any), loads the span and goes online.
  absl::Status JoinAndLoad();

  // "joining", "online" or "draining".
  std::string StateName() const;
  NodeView View() const;
  // Waits until `timeout` passed or Shutdown began.
  void SleepUnlessStopping(absl::Duration timeout);
  absl::Status Join();
  void HeartbeatLoop();
  // Switches to layers [first, last) without a restart (ordered by a coordinator).
  void MoveTo(int first, int last);
  v1::NodeDescriptor Descriptor() const;
  void FillInfo(v1::NodeInfo* info) const;

  NodeOptions options_;
  std::shared_ptr<const model::Model> model_;
  Backends backends_;
  std::shared_ptr<LinkBoard> links_ = std::make_shared<LinkBoard>();
  std::shared_ptr<LinkBudget> handoff_budget_;
  // The hand-off links' threads, in and out. Destroyed after the worker (which closes every
  // outgoing link) and the server and service (which end every push stream), so that each of its
  // threads has been told to end by then.
  ThreadSet handoff_threads_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<NodeMetrics> metrics_;  // with NodeOptions::http; outlives server_
  std::unique_ptr<NodeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  Throughput throughput_;
  struct CoordinatorLink {
    std::string address;
    std::unique_ptr<v1::Coordinator::Stub> stub;
    bool known = false;
  };
  std::vector<CoordinatorLink> coordinators_;
  absl::Duration heartbeat_interval_ = absl::Seconds(1);
  std::atomic<int> state_{v1::NODE_STATE_JOINING};
  std::atomic<bool> stopping_{false};
  // With stop_cv_, wakes the waits of Drain, Join and the heartbeats when Shutdown begins (it
  // guards nothing: stopping_ is atomic).
  absl::Mutex stop_mu_;
  absl::CondVar stop_cv_;
  std::thread heartbeat_thread_;
  std::thread move_thread_;
  bool movable_ = false;  // started with --layers auto
  std::atomic<bool> moving_{false};
  std::atomic<bool> shut_down_{false};
  std::unique_ptr<NodeHttpServer> http_;  // with NodeOptions::http
};

// Measures one layer on `backend` (a one-layer span), with KV from `pool`.
Throughput MeasureThroughput(model::SpanBackend& backend, model::KvPool& pool, int n_embd);

}  // namespace strata::node
