#include "node/node_server.h"

#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "kernels/ops.h"
#include "model/warm.h"
#include "transport/channels.h"

namespace strata::node {
namespace {

constexpr char kVersion[] = "0.1.0";

std::string RandomId() {
  std::random_device rd;
  static const char* hex = "0123456789abcdef";
  std::string id = "node-";
  for (int i = 0; i < 8; ++i) id += hex[rd() % 16];
  return id;
}

// Replaces a wildcard host with loopback so the advertised address is dialable.
std::string Dialable(const std::string& bound) {
  for (const char* any : {"0.0.0.0:", "[::]:"}) {
    if (bound.rfind(any, 0) == 0) return "127.0.0.1:" + bound.substr(std::string(any).size());
  }
  return bound;
}

}  // namespace

Throughput MeasureThroughput(model::SpanBackend& backend, model::KvPool& pool, int n_embd) {
  Throughput t;
  auto time_rows = [&](int rows, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      auto kv = backend.NewKvCache(&pool);
      std::vector<float> hidden(static_cast<size_t>(rows) * n_embd, 0.01f);
      std::vector<model::Row> meta(rows);
      for (int i = 0; i < rows; ++i) meta[i] = {i, 1};
      const model::LayerSpan::Part part{kv.get(), meta};
      const absl::Time t0 = absl::Now();
      (void)backend.ForwardBatch({&part, 1}, hidden.data());
      best = std::min(best, absl::ToDoubleMilliseconds(absl::Now() - t0));
    }
    return best;
  };
  time_rows(1, 1);  // warm the layer's pages
  const double layers = backend.last_layer() - backend.first_layer();
  t.layer_ms = time_rows(1, 5) / layers;
  t.batched_layer_ms = time_rows(16, 2) / 16 / layers;
  return t;
}

#if defined(STRATA_CUDA)
// `device_list`: "cuda:N" or several, comma-separated (a tensor-parallel span).
absl::StatusOr<Backends> MakeCudaBackends(const std::string& device_list,
                                          std::shared_ptr<const model::Model> model);
std::shared_ptr<HandoffProvider> MakeNcclHandoff(int device, std::string node_id);
#endif

HandoffOptions MakeHandoff(const NodeOptions& options) {
  HandoffOptions h;
  h.budget = std::make_shared<LinkBudget>(options.max_handoff_links);
  if (options.handoff) {
    h.provider = options.handoff;
    return h;
  }
  if (!options.nccl) {
    h.off_reason = "NCCL is off on this node (--no-nccl)";
    return h;
  }
  if (options.device.rfind("cuda:", 0) != 0) {
    h.off_reason = "this node runs on the CPU";
    return h;
  }
#if defined(STRATA_CUDA)
  // A tensor-parallel node ("cuda:N,cuda:M") hands off from its first device.
  int index = 0;
  const std::string first = options.device.substr(5, options.device.find(',') - 5);
  if (absl::SimpleAtoi(first, &index) && index >= 0) {
    h.provider = MakeNcclHandoff(index, options.node_id);
  } else {
    h.off_reason = StrCat("bad device '", options.device, "'");
  }
#else
  h.off_reason = "this build has no CUDA support";
#endif
  return h;
}

absl::StatusOr<Backends> MakeBackends(const std::string& device,
                                      std::shared_ptr<const model::Model> model,
                                      int threads) {
  if (device == "cpu") {
    auto pool = std::make_shared<ThreadPool>(threads > 0 ? threads : ThreadPool::DefaultThreads());
    Backends b;
    b.make = [model, pool](int first,
                           int last) -> absl::StatusOr<std::unique_ptr<model::SpanBackend>> {
      auto span = model::LayerSpan::Load(model, first, last);
      if (!span.ok()) return span.status();
      return std::unique_ptr<model::SpanBackend>(new model::CpuSpanBackend(std::move(*span), pool));
    };
    b.kv_pool = [](size_t bytes) { return model::NewCpuKvPool(bytes); };
    b.description = StrCat("cpu/", kernels::ActiveIsa());
    return b;
  }
  if (device.rfind("cuda:", 0) == 0) {
#if defined(STRATA_CUDA)
    return MakeCudaBackends(device, std::move(model));
#else
    return absl::FailedPreconditionError(StrCat("--device ",
                                                device,
                                                ": this build has no CUDA support (configure with "
                                                "-DSTRATA_CUDA=ON)"));
#endif
  }
  return absl::InvalidArgumentError(StrCat("bad device '", device, "' (cpu or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<NodeServer>> NodeServer::Start(NodeOptions options) {
  auto node = std::unique_ptr<NodeServer>(new NodeServer());
  RETURN_IF_ERROR(node->Open(std::move(options)));
  node->MakeParts();
  RETURN_IF_ERROR(node->Listen());
  node->worker_->Start();
  RETURN_IF_ERROR(node->StartHttp());
  RETURN_IF_ERROR(node->Measure());
  RETURN_IF_ERROR(node->JoinAndLoad());
  return node;
}

absl::Status NodeServer::Open(NodeOptions options) {
  if (options.node_id.empty()) options.node_id = RandomId();
  if (!options.log) options.log = [](const std::string&) {};
  options.worker.node_id = options.node_id;
  options.worker.verify_threads = options.threads;
  options_ = std::move(options);
  movable_ = options_.auto_span;
  ASSIGN_OR_RETURN(model_, model::Model::Open(options_.model_path));
  const int n_layer = model_->hparams().n_layer;
  if (!options_.auto_span && (options_.first_layer < 0 || options_.last_layer > n_layer ||
                              options_.first_layer >= options_.last_layer)) {
    return absl::InvalidArgumentError(StrCat("--layers ",
                                             options_.first_layer,
                                             ":",
                                             options_.last_layer,
                                             " is not inside [0, ",
                                             n_layer,
                                             ")"));
  }
  if (options_.auto_span && options_.coordinators.empty()) {
    return absl::InvalidArgumentError("--layers auto needs a --coordinator to choose the span");
  }
  ASSIGN_OR_RETURN(backends_, MakeBackends(options_.device, model_, options_.threads));
  return absl::OkStatus();
}

void NodeServer::MakeParts() {
  WorkerOptions worker = options_.worker;
  if (!options_.http.empty()) {
    worker.on_batch = [this](absl::Duration compute) {
      if (metrics_) metrics_->ObserveBatch(compute);
    };
  }
  HandoffOptions handoff = MakeHandoff(options_);
  handoff.board = links_;
  handoff.threads = &handoff_threads_;
  handoff_budget_ = handoff.budget;
  worker_ = std::make_unique<Worker>(model_,
                                     worker,
                                     GrpcDownstreamFactory(handoff),
                                     backends_.make,
                                     backends_.kv_pool(options_.worker.kv_bytes));
  if (!options_.http.empty()) {
    metrics_ = std::make_unique<NodeMetrics>(&worker_->stats(), [this] { return View(); });
  }
  service_ = std::make_unique<NodeService>(
      worker_.get(), [this](v1::NodeInfo* info) { FillInfo(info); }, handoff);
}

absl::Status NodeServer::Listen() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.RegisterService(service_.get());
  if (metrics_) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> icpt;
    icpt.push_back(NodeMetrics::InterceptorFactory(metrics_.get()));
    builder.experimental().SetInterceptorCreators(std::move(icpt));
  }
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return absl::UnavailableError(
        StrCat("cannot listen on ", options_.listen, " (bad address or port in use)"));
  }
  const std::string host = options_.listen.substr(0, options_.listen.rfind(':'));
  address_ = Dialable(StrCat(host, ":", port));
  if (options_.advertise.empty()) options_.advertise = address_;
  return absl::OkStatus();
}

absl::Status NodeServer::StartHttp() {
  if (!metrics_) return absl::OkStatus();
  metrics_->Start();
  ASSIGN_OR_RETURN(
      http_,
      NodeHttpServer::Start(
          options_.http, {[this] { return metrics_->Render(); }, [this] { return StateName(); }}));
  options_.log(StrCat("metrics at http://", http_->address(), "/metrics"));
  return absl::OkStatus();
}

absl::Status NodeServer::Measure() {
  {
    ASSIGN_OR_RETURN(auto probe, backends_.make(0, 1));
    auto probe_pool = backends_.kv_pool(size_t{64} << 20);
    throughput_ = MeasureThroughput(*probe, *probe_pool, model_->hparams().n_embd);
  }
  options_.log(absl::StrFormat("measured %.3f ms per layer per token (%.3f batched)",
                               throughput_.layer_ms,
                               throughput_.batched_layer_ms));
  return absl::OkStatus();
}

absl::Status NodeServer::JoinAndLoad() {
  for (const std::string& c : options_.coordinators) {
    coordinators_.push_back(
        {c, v1::Coordinator::NewStub(transport::ChannelCache::Default().Get(c)), false});
  }
  // Join() replaces the span with the one the coordinator chose.
  if (!coordinators_.empty()) RETURN_IF_ERROR(Join());
  const int first = options_.first_layer, last = options_.last_layer;
  // Load the span: fault in its weights with progress.
  ASSIGN_OR_RETURN(auto span, model::LayerSpan::Load(model_, first, last));
  std::vector<kernels::Tensor> weights = span->tensors();
  uint64_t last_report = 0;
  model::TouchPages(weights, [&](uint64_t done, uint64_t total) {
    if (done == total || done - last_report > total / 4) {
      last_report = done;
      options_.log(absl::StrFormat("loading layers %d-%d: %d%%",
                                   first,
                                   last - 1,
                                   static_cast<int>(total ? done * 100 / total : 100)));
    }
  });
  worker_->SetSpan(first, last);
  state_ = v1::NODE_STATE_ONLINE;
  if (!coordinators_.empty()) {
    heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  }
  return absl::OkStatus();
}

std::string NodeServer::StateName() const {
  const int state = state_.load();
  return state == v1::NODE_STATE_ONLINE     ? "online"
         : state == v1::NODE_STATE_DRAINING ? "draining"
                                            : "joining";
}

NodeView NodeServer::View() const {
  NodeView v;
  v.node_id = options_.node_id;
  v.model_id = model_->id();
  v.backend = backends_.description;
  v.version = kVersion;
  v.state = StateName();
  v.first_layer = worker_->first_layer();
  v.last_layer = worker_->last_layer();
  v.layer_ms = throughput_.layer_ms;
  v.batched_layer_ms = throughput_.batched_layer_ms;
  return v;
}

void NodeServer::SleepUnlessStopping(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&stop_mu_);
  while (!stopping_.load() && !stop_cv_.WaitWithDeadline(&stop_mu_, deadline)) {
  }
}

NodeServer::~NodeServer() { Shutdown(); }

void NodeServer::Drain(absl::Duration timeout) {
  state_ = v1::NODE_STATE_DRAINING;
  worker_->SetDraining(true, /*notify=*/true, "the node is leaving the swarm");
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&stop_mu_);
  while (worker_->stats().active_sessions.load() > 0 && absl::Now() < deadline) {
    stop_cv_.WaitWithTimeout(&stop_mu_, absl::Milliseconds(50));
  }
}

v1::NodeDescriptor NodeServer::Descriptor() const {
  v1::NodeDescriptor d;
  d.set_node_id(options_.node_id);
  d.set_address(options_.advertise);
  d.set_model_id(model_->id());
  d.set_num_layers(model_->hparams().n_layer);
  d.set_max_layers(options_.max_layers > 0 ? options_.max_layers : model_->hparams().n_layer);
  d.set_backend(backends_.description);
  d.set_version(kVersion);
  d.set_kv_capacity_bytes(static_cast<int64_t>(options_.worker.kv_bytes));
  d.set_layer_ms(throughput_.layer_ms);
  d.set_batched_layer_ms(throughput_.batched_layer_ms);
  d.set_movable(movable_);
  return d;
}

absl::Status NodeServer::Join() {
  // The first coordinator that answers chooses the span; the others are told that span.
  absl::Status last_error = absl::UnavailableError("no coordinator reachable");
  bool joined = false;
  for (int attempt = 0; !joined && attempt < 30 && !stopping_; ++attempt) {
    for (CoordinatorLink& c : coordinators_) {
      v1::JoinRequest req;
      req.set_protocol_version(v1::PROTOCOL_VERSION_1);
      *req.mutable_node() = Descriptor();
      req.set_auto_span(!joined && options_.auto_span);
      req.set_first_layer(options_.first_layer);
      req.set_last_layer(options_.last_layer);
      v1::JoinResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      grpc::Status st = c.stub->Join(&ctx, req, &resp);
      if (!st.ok()) {
        last_error = FromGrpcStatus(st);
        if (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
            st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
          return absl::Status(
              last_error.code(),
              StrCat("coordinator ", c.address, " refused the join: ", st.error_message()));
        }
        continue;
      }
      c.known = true;
      if (!joined) {
        joined = true;
        options_.first_layer = resp.first_layer();
        options_.last_layer = resp.last_layer();
        options_.auto_span = false;
        if (resp.heartbeat_interval_ms() > 0) {
          heartbeat_interval_ = absl::Milliseconds(resp.heartbeat_interval_ms());
        }
        options_.log(absl::StrFormat("joined %s as %s: layers %d-%d",
                                     c.address,
                                     options_.node_id,
                                     resp.first_layer(),
                                     resp.last_layer() - 1));
      }
    }
    if (!joined) {
      options_.log(StrCat("waiting for a coordinator: ", last_error.message()));
      SleepUnlessStopping(absl::Seconds(1));
    }
  }
  if (!joined) return last_error;
  return absl::OkStatus();
}

void NodeServer::MoveTo(int first, int last) {
  const int old_first = worker_->first_layer(), old_last = worker_->last_layer();
  if (first == old_first && last == old_last) return;
  options_.log(absl::StrFormat(
      "moving from layers %d-%d to %d-%d", old_first, old_last - 1, first, last - 1));
  if (first > old_first || last < old_last) {
    // Some layers go away: let the sessions move elsewhere first (they replay there).
    Drain(absl::Seconds(30));
  }
  auto span = model::LayerSpan::Load(model_, first, last);
  if (!span.ok()) {
    options_.log(StrCat("cannot move: ", span.status().message()));
  } else {
    model::TouchPages((*span)->tensors());
    worker_->SetSpan(first, last);
  }
  worker_->SetDraining(false);
  if (!stopping_) state_ = v1::NODE_STATE_ONLINE;
  options_.log(absl::StrFormat(
      "now serving layers %d-%d", worker_->first_layer(), worker_->last_layer() - 1));
}

void NodeServer::HeartbeatLoop() {
  int64_t last_rows = stats().total_rows.load();
  absl::Time last_time = absl::Now();
  while (!stopping_) {
    SleepUnlessStopping(heartbeat_interval_);
    if (stopping_) break;
    const WorkerStats& s = stats();
    const absl::Time now = absl::Now();
    const int64_t rows = s.total_rows.load();
    const double tps = (rows - last_rows) / std::max(1e-3, absl::ToDoubleSeconds(now - last_time));
    last_rows = rows;
    last_time = now;
    for (CoordinatorLink& c : coordinators_) {
      v1::HeartbeatRequest req;
      req.set_node_id(options_.node_id);
      req.set_state(static_cast<v1::NodeState>(state_.load()));
      req.set_first_layer(first_layer());
      req.set_last_layer(last_layer());
      v1::NodeLoad* load = req.mutable_load();
      load->set_active_sessions(s.active_sessions.load());
      load->set_queue_depth(s.queue_depth.load());
      load->set_kv_used_bytes(s.kv_used_bytes.load());
      load->set_kv_capacity_bytes(s.kv_capacity_bytes.load());
      load->set_tokens_per_s(tps);
      load->set_step_ms_p50(s.last_batch_ms.load());
      load->set_total_rows(rows);
      load->set_errors(s.errors.load());
      if (!c.known) {
        *req.mutable_node() = Descriptor();
        req.mutable_node()->set_node_id(options_.node_id);
      }
      v1::HeartbeatResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      grpc::Status st = c.stub->Heartbeat(&ctx, req, &resp);
      if (st.ok()) c.known = resp.known();
      if (st.ok() && resp.move() && movable_ && !moving_.exchange(true)) {
        if (move_thread_.joinable()) move_thread_.join();
        move_thread_ =
            std::thread([this, first = resp.move_first_layer(), last = resp.move_last_layer()] {
              MoveTo(first, last);
              moving_ = false;
            });
      }
    }
  }
}

void NodeServer::FillInfo(v1::NodeInfo* info) const {
  info->set_node_id(options_.node_id);
  info->set_version(kVersion);
  info->set_protocol_version(v1::PROTOCOL_VERSION_1);
  info->set_model_id(model_->id());
  info->set_num_layers(model_->hparams().n_layer);
  info->set_first_layer(worker_->first_layer());
  info->set_last_layer(worker_->last_layer());
  info->set_hidden_size(model_->hparams().n_embd);
  info->set_backend(backends_.description);
  const WorkerStats& s = worker_->stats();
  info->set_active_sessions(s.active_sessions.load());
  info->set_kv_used_bytes(s.kv_used_bytes.load());
  info->set_kv_capacity_bytes(s.kv_capacity_bytes.load());
  for (v1::DownstreamLinkInfo& link : links_->Snapshot()) *info->add_links() = std::move(link);
}

void NodeServer::Shutdown() {
  if (shut_down_.exchange(true)) return;
  stopping_ = true;
  stop_cv_.SignalAll();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (move_thread_.joinable()) move_thread_.join();
  for (CoordinatorLink& c : coordinators_) {
    v1::LeaveRequest req;
    req.set_node_id(options_.node_id);
    v1::LeaveResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    (void)c.stub->Leave(&ctx, req, &resp);
  }
  if (worker_) worker_->Stop();  // absent when Start failed early
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (http_) http_->Stop();
}

void NodeServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace strata::node
