#include "node/metrics.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"
#include "strata/v1/node.pb.h"

namespace strata::node {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

const prometheus::Histogram::BucketBoundaries& BatchBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5};
  return *buckets;
}

// google.rpc.Code names, for labels (the number for a code outside them).
std::string CodeName(absl::StatusCode status_code) {
  const int code = static_cast<int>(status_code);
  return code >= 0 && code <= 16 ? absl::StatusCodeToString(status_code) : std::to_string(code);
}

MetricFamily Single(const char* name,
                    const char* help,
                    MetricType type,
                    double value,
                    std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return MetricFamily{name, help, type, {std::move(m)}};
}

// Counts OpErrors in Session responses and non-OK final statuses of every Node method.
class ErrorCountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  ErrorCountingInterceptor(NodeMetrics* metrics, std::string method, bool session)
      : metrics_(metrics), method_(std::move(method)), session_(session) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (session_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      const auto* msg = static_cast<const v1::SessionResponse*>(methods->GetSendMessage());
      if (msg != nullptr && msg->has_error()) {
        metrics_->CountOpError(static_cast<absl::StatusCode>(msg->error().code()));
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const absl::Status status = FromGrpcStatus(methods->GetSendStatus());
      if (!status.ok()) metrics_->CountRpcError(method_, status.code());
    }
    methods->Proceed();
  }

 private:
  NodeMetrics* metrics_;
  std::string method_;
  bool session_;
};

class ErrorCountingFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ErrorCountingFactory(NodeMetrics* metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    constexpr absl::string_view kPrefix = "/strata.v1.Node/";
    const char* method = info->method();
    if (method == nullptr || !absl::StartsWith(method, kPrefix)) return nullptr;
    std::string name(method + kPrefix.size());
    const bool session = name == "Session";
    return new ErrorCountingInterceptor(metrics_, std::move(name), session);
  }

 private:
  NodeMetrics* metrics_;
};

}  // namespace

NodeMetrics::NodeMetrics(const WorkerStats* stats, std::function<NodeView()> view)
    : stats_(stats),
      view_(std::move(view)),
      batch_seconds_(prometheus::BuildHistogram()
                         .Name("strata_node_batch_seconds")
                         .Help("Compute time of batched forward passes")
                         .Register(registry_)
                         .Add({}, BatchBuckets())),
      op_errors_(prometheus::BuildCounter()
                     .Name("strata_node_op_errors_total")
                     .Help("Op errors sent to clients, by google.rpc code")
                     .Register(registry_)),
      rpc_errors_(prometheus::BuildCounter()
                      .Name("strata_node_rpc_errors_total")
                      .Help("Node calls and streams that ended with an error, by method and code")
                      .Register(registry_)) {}

NodeMetrics::~NodeMetrics() {
  {
    absl::MutexLock lock(&mu_);  // releasing it wakes the sampler
    stop_ = true;
  }
  if (sampler_.joinable()) sampler_.join();
}

void NodeMetrics::Start() {
  if (!sampler_.joinable()) sampler_ = std::thread([this] { SampleLoop(); });
}

void NodeMetrics::SampleLoop() {
  int64_t rows = stats_->total_rows.load();
  absl::Time rate_start = absl::Now();
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), kSamplePeriod)) {
    const absl::Time now = absl::Now();
    if (now - rate_start >= absl::Seconds(1)) {
      const int64_t now_rows = stats_->total_rows.load();
      rows_per_s_ = (now_rows - rows) / absl::ToDoubleSeconds(now - rate_start);
      rows = now_rows;
      rate_start = now;
    }
  }
}

void NodeMetrics::ObserveBatch(absl::Duration compute) {
  batch_seconds_.Observe(absl::ToDoubleSeconds(compute));
}

void NodeMetrics::CountOpError(absl::StatusCode code) {
  op_errors_.Add({{"code", CodeName(code)}}).Increment();
}

void NodeMetrics::CountRpcError(const std::string& method, absl::StatusCode code) {
  rpc_errors_.Add({{"method", method}, {"code", CodeName(code)}}).Increment();
}

std::string NodeMetrics::Render() {
  const NodeView v = view_();
  const WorkerStats& s = *stats_;
  std::vector<MetricFamily> f = registry_.Collect();
  f.push_back(Single("strata_node_info",
                     "The node (value 1)",
                     MetricType::Gauge,
                     1,
                     {{"node_id", v.node_id},
                      {"model_id", v.model_id},
                      {"backend", v.backend},
                      {"version", v.version}}));
  MetricFamily state{
      "strata_node_up_state", "1 for the node's current state", MetricType::Gauge, {}};
  for (const char* name : {"joining", "online", "draining"}) {
    ClientMetric m;
    m.label = {{"state", name}};
    m.gauge.value = v.state == name ? 1 : 0;
    state.metric.push_back(std::move(m));
  }
  f.push_back(std::move(state));
  f.push_back(
      Single("strata_node_first_layer", "First layer served", MetricType::Gauge, v.first_layer));
  f.push_back(Single(
      "strata_node_last_layer", "One past the last layer served", MetricType::Gauge, v.last_layer));
  MetricFamily layer{"strata_node_layer_seconds",
                     "Measured time of one row through one layer: alone (decode) and per row in "
                     "a batch of 16 (batched)",
                     MetricType::Gauge,
                     {}};
  for (auto [kind, ms] : {std::pair{"decode", v.layer_ms}, {"batched", v.batched_layer_ms}}) {
    ClientMetric m;
    m.label = {{"kind", kind}};
    m.gauge.value = ms / 1000.0;
    layer.metric.push_back(std::move(m));
  }
  f.push_back(std::move(layer));
  f.push_back(Single("strata_node_rows_total",
                     "Rows (token positions) computed",
                     MetricType::Counter,
                     s.total_rows.load()));
  f.push_back(Single("strata_node_batches_total",
                     "Batched forward passes (steps)",
                     MetricType::Counter,
                     s.total_batches.load()));
  f.push_back(Single("strata_node_batched_sessions_total",
                     "Sessions summed over batches",
                     MetricType::Counter,
                     s.batched_sessions.load()));
  f.push_back(Single("strata_node_verified_runs_total",
                     "Forwards verified here as the last hop (drafts decided with the head)",
                     MetricType::Counter,
                     s.verified_runs.load()));
  f.push_back(Single("strata_node_rows_per_second",
                     "Rows computed per second (last second)",
                     MetricType::Gauge,
                     rows_per_s_.load()));
  f.push_back(Single("strata_node_last_batch_seconds",
                     "Compute time of the latest batch",
                     MetricType::Gauge,
                     s.last_batch_ms.load() / 1000.0));
  f.push_back(Single("strata_node_queue_depth",
                     "Events waiting for the worker",
                     MetricType::Gauge,
                     s.queue_depth.load()));
  f.push_back(Single(
      "strata_node_active_sessions", "Open sessions", MetricType::Gauge, s.active_sessions.load()));
  f.push_back(Single("strata_node_kv_used_bytes",
                     "KV cache bytes in use",
                     MetricType::Gauge,
                     s.kv_used_bytes.load()));
  f.push_back(Single("strata_node_kv_capacity_bytes",
                     "KV cache capacity",
                     MetricType::Gauge,
                     s.kv_capacity_bytes.load()));
  f.push_back(Single("strata_node_errors_total",
                     "Ops that failed on this node",
                     MetricType::Counter,
                     s.errors.load()));
  return prometheus::TextSerializer().Serialize(f);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NodeMetrics::InterceptorFactory(NodeMetrics* metrics) {
  return std::make_unique<ErrorCountingFactory>(metrics);
}

}  // namespace strata::node
