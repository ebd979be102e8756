#include "coordinator/http.h"

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/strings.h"
#include "coordinator/dashboard/assets.h"
#include "coordinator/metrics.h"
#include "httplib.h"

namespace strata::coordinator {
namespace {

const char* StateName(v1::NodeState state) {
  switch (state) {
    case v1::NODE_STATE_JOINING:
      return "joining";
    case v1::NODE_STATE_ONLINE:
      return "online";
    case v1::NODE_STATE_DRAINING:
      return "draining";
    default:
      return "unspecified";
  }
}

nlohmann::json LoadToJson(const v1::NodeLoad& load) {
  return {{"active_sessions", load.active_sessions()},
          {"queue_depth", load.queue_depth()},
          {"kv_used_bytes", load.kv_used_bytes()},
          {"kv_capacity_bytes", load.kv_capacity_bytes()},
          {"tokens_per_s", load.tokens_per_s()},
          {"step_ms_p50", load.step_ms_p50()},
          {"total_rows", load.total_rows()},
          {"errors", load.errors()}};
}

nlohmann::json NodeToJson(const v1::NodeStatus& n, int64_t now_ms) {
  const v1::NodeDescriptor& d = n.node();
  nlohmann::json rtts = nlohmann::json::array();
  for (const v1::PeerRtt& r : n.rtts())
    rtts.push_back({{"node_id", r.node_id()}, {"rtt_ms", r.rtt_ms()}});
  return {{"id", d.node_id()},
          {"address", d.address()},
          {"first_layer", n.first_layer()},
          {"last_layer", n.last_layer()},
          {"state", StateName(n.state())},
          {"backend", d.backend()},
          {"version", d.version()},
          {"model_id", d.model_id()},
          {"max_layers", d.max_layers()},
          {"layer_ms", d.layer_ms()},
          {"batched_layer_ms", d.batched_layer_ms()},
          {"throughput", n.throughput()},
          {"kv_capacity_bytes", d.kv_capacity_bytes()},
          {"load", LoadToJson(n.load())},
          {"rtts", std::move(rtts)},
          {"joined_unix_ms", n.joined_unix_ms()},
          {"last_heartbeat_unix_ms", n.last_heartbeat_unix_ms()},
          {"uptime_ms", now_ms - n.joined_unix_ms()},
          {"heartbeat_age_ms", now_ms - n.last_heartbeat_unix_ms()},
          {"banned", n.banned_until_unix_ms() > now_ms},
          {"banned_until_unix_ms", n.banned_until_unix_ms()},
          {"failures", n.failures()}};
}

nlohmann::json OneRouteToJson(const v1::Route& route) {
  nlohmann::json hops = nlohmann::json::array();
  for (const v1::Hop& h : route.hops()) {
    hops.push_back({{"node_id", h.node_id()},
                    {"address", h.address()},
                    {"first_layer", h.first_layer()},
                    {"last_layer", h.last_layer()}});
  }
  return {{"hops", std::move(hops)}, {"estimated_step_ms", route.estimated_step_ms()}};
}

void SendJson(httplib::Response& res, int http_status, const nlohmann::json& body) {
  res.status = http_status;
  res.set_content(body.dump(), "application/json");
}

void SendError(httplib::Response& res, const absl::Status& status, bool in_body = false) {
  const int http_status = in_body                                           ? 200
                          : status.code() == absl::StatusCode::kUnavailable ? 503
                                                                            : 400;
  SendJson(res,
           http_status,
           {{"error",
             {{"code", absl::StatusCodeToString(status.code())},
              {"message", std::string(status.message())}}}});
}

// The RouteRequest described by /api/route's query parameters.
absl::StatusOr<v1::RouteRequest> ParseRouteQuery(const httplib::Request& req) {
  v1::RouteRequest request;
  for (const char* name : {"start_layer", "alternates"}) {
    if (!req.has_param(name)) continue;
    int value = 0;
    if (!absl::SimpleAtoi(req.get_param_value(name), &value)) {
      return absl::InvalidArgumentError(StrCat(name, " is not an integer"));
    }
    if (std::string_view(name) == "start_layer") {
      request.set_start_layer(value);
    } else {
      request.set_alternates(value);
    }
  }
  if (req.has_param("exclude")) {
    for (absl::string_view id :
         absl::StrSplit(req.get_param_value("exclude"), ',', absl::SkipEmpty())) {
      request.add_exclude_node_ids(std::string(id));
    }
  }
  if (req.has_param("model_id")) request.set_model_id(req.get_param_value("model_id"));
  return request;
}

// Where Debian's libjs-chart.js puts Chart.js (UMD build); read when it was not embedded.
constexpr char kChartJsPath[] = "/usr/share/javascript/chart.js/chart.min.js";

// The dashboard's pages run only its own scripts: no inline code, no other origin.
void SetPageHeaders(httplib::Response& res) {
  res.set_header("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                 "base-uri 'none'; frame-ancestors 'none'");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Cache-Control", "no-cache");
}

bool HasAsset(std::string_view url) {
  for (const dashboard::Asset& a : dashboard::Assets()) {
    if (a.url == url) return true;
  }
  return false;
}

bool ServeAsset(std::string_view url, httplib::Response& res) {
  for (const dashboard::Asset& a : dashboard::Assets()) {
    if (a.url != url) continue;
    SetPageHeaders(res);
    res.set_content(a.data.data(), a.data.size(), std::string(a.content_type).c_str());
    return true;
  }
  return false;
}

// A fixed label for a request path, so hostile paths cannot grow the metrics.
std::string_view HandlerLabel(const std::string& path) {
  for (std::string_view known : {"/",
                                 "/app.js",
                                 "/style.css",
                                 "/chart.js",
                                 "/healthz",
                                 "/api/swarm",
                                 "/api/route",
                                 "/api/history",
                                 "/metrics"}) {
    if (path == known) return known;
  }
  return "other";
}

constexpr absl::Duration kSampleInterval = absl::Seconds(1);
constexpr size_t kHistoryCapacity = 900;  // 15 minutes at one sample a second

}  // namespace

nlohmann::json SwarmToJson(const v1::SwarmSnapshot& swarm) {
  nlohmann::json nodes = nlohmann::json::array();
  for (const v1::NodeStatus& n : swarm.nodes()) nodes.push_back(NodeToJson(n, swarm.unix_ms()));
  nlohmann::json coverage = nlohmann::json::array();
  for (const v1::LayerCoverage& c : swarm.coverage()) {
    coverage.push_back(
        {{"layer", c.layer()},
         {"node_ids", std::vector<std::string>(c.node_ids().begin(), c.node_ids().end())},
         {"throughput", c.throughput()}});
  }
  nlohmann::json events = nlohmann::json::array();
  for (const v1::SwarmEvent& e : swarm.events()) {
    events.push_back({{"unix_ms", e.unix_ms()},
                      {"kind", e.kind()},
                      {"node_id", e.node_id()},
                      {"detail", e.detail()}});
  }
  return {{"model_id", swarm.model_id()},
          {"num_layers", swarm.num_layers()},
          {"unix_ms", swarm.unix_ms()},
          {"nodes", std::move(nodes)},
          {"coverage", std::move(coverage)},
          {"uncovered",
           std::vector<int>(swarm.uncovered_layers().begin(), swarm.uncovered_layers().end())},
          {"events", std::move(events)}};
}

nlohmann::json RouteToJson(const v1::RouteResponse& route) {
  nlohmann::json alternates = nlohmann::json::array();
  for (const v1::Route& r : route.alternates()) alternates.push_back(OneRouteToJson(r));
  return {{"num_layers", route.num_layers()},
          {"route", OneRouteToJson(route.route())},
          {"alternates", std::move(alternates)}};
}

struct HttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> done{false};  // the serving thread has returned
  int port = 0;

  // The sampler: one snapshot per kSampleInterval into `history` and the event counters.
  SwarmHistory history{kHistoryCapacity};
  std::thread sampler;
  absl::Mutex sampler_mu;
  bool stop_sampler ABSL_GUARDED_BY(sampler_mu) = false;

  void SampleLoop(Registry* registry) ABSL_LOCKS_EXCLUDED(sampler_mu) {
    EventCounter events(&CoordinatorMetrics::Global());
    SwarmSampler sampler;
    while (!SamplerStopped()) {
      // The snapshot also makes the registry notice expired nodes without waiting for traffic.
      const v1::SwarmSnapshot snapshot = registry->Snapshot(/*with_events=*/true);
      history.Add(sampler.Next(snapshot));
      events.Track(snapshot);
      absl::MutexLock lock(&sampler_mu);
      sampler_mu.AwaitWithTimeout(absl::Condition(&stop_sampler), kSampleInterval);
    }
  }

  bool SamplerStopped() ABSL_LOCKS_EXCLUDED(sampler_mu) {
    absl::MutexLock lock(&sampler_mu);
    return stop_sampler;
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const { return impl_->port; }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host,
                                                              int port,
                                                              Registry* registry,
                                                              RouterOptions router_options) {
  auto impl = std::make_unique<Impl>();
  httplib::Server& server = impl->server;
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second coordinator
  // share the port silently instead of failing with "address in use".
  server.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.set_keep_alive_timeout(2);
  server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    CoordinatorMetrics::Global().CountHttpRequest(HandlerLabel(req.path), res.status);
  });
  for (const dashboard::Asset& asset : dashboard::Assets()) {
    server.Get(std::string(asset.url),
               [url = asset.url](const httplib::Request&, httplib::Response& res) {
                 ServeAsset(url, res);
               });
  }
  if (!HasAsset("/chart.js")) {
    // Not embedded at build time: read the Debian package's copy now (404 without it; the page
    // then shows its tables without charts).
    server.Get("/chart.js", [](const httplib::Request&, httplib::Response& res) {
      std::ifstream in(kChartJsPath, std::ios::binary);
      if (!in) {
        res.status = 404;
        res.set_content(
            StrCat("Chart.js not found at ", kChartJsPath, " (install libjs-chart.js)\n"),
            "text/plain");
        return;
      }
      std::stringstream data;
      data << in.rdbuf();
      SetPageHeaders(res);
      res.set_content(data.str(), "application/javascript; charset=utf-8");
    });
  }
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server.Get("/api/swarm", [registry](const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, SwarmToJson(registry->Snapshot()));
  });
  server.Get("/api/route",
             [registry, router_options](const httplib::Request& req, httplib::Response& res) {
               const bool in_body = req.get_param_value("errors") == "body";
               absl::StatusOr<v1::RouteRequest> request = ParseRouteQuery(req);
               if (!request.ok()) return SendError(res, request.status(), in_body);
               const v1::SwarmSnapshot snapshot = registry->Snapshot(/*with_events=*/false);
               const absl::Time start = absl::Now();
               absl::StatusOr<v1::RouteResponse> route =
                   PlanRoute(snapshot, *request, router_options);
               CoordinatorMetrics::Global().ObserveRoutePlan(
                   "http", absl::Now() - start, route.status().code());
               if (!route.ok()) return SendError(res, route.status(), in_body);
               SendJson(res, 200, RouteToJson(*route));
             });
  Impl* const state = impl.get();
  server.Get("/api/history", [state](const httplib::Request& req, httplib::Response& res) {
    int64_t since = 0;
    if (req.has_param("since") && !absl::SimpleAtoi(req.get_param_value("since"), &since)) {
      return SendError(res, absl::InvalidArgumentError("since is not an integer"));
    }
    nlohmann::json samples = nlohmann::json::array();
    for (const SwarmSample& s : state->history.Since(since)) samples.push_back(SampleToJson(s));
    SendJson(res,
             200,
             {{"interval_ms", absl::ToInt64Milliseconds(kSampleInterval)},
              {"capacity", state->history.capacity()},
              {"samples", std::move(samples)}});
  });
  server.Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
    res.set_content(CoordinatorMetrics::Global().Render(registry->Snapshot(/*with_events=*/false)),
                    "text/plain; version=0.0.4; charset=utf-8");
  });

  if (port == 0) {
    impl->port = server.bind_to_any_port(host);
  } else if (server.bind_to_port(host, port)) {
    impl->port = port;
  } else {
    impl->port = -1;
  }
  if (impl->port <= 0) {
    return absl::UnavailableError(StrCat("cannot listen for HTTP on ", host, ":", port));
  }
  impl->thread = std::thread([s = &impl->server, done = &impl->done] {
    if (!s->listen_after_bind()) STRATA_LOG(Error) << "HTTP server stopped with an error";
    done->store(true);
  });
  // stop() is a no-op until the server runs: wait for it, so that Stop() always ends it.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server.is_running() && !impl->done.load() && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server.is_running()) STRATA_LOG(Warning) << "HTTP server did not report running";
  impl->sampler = std::thread([state, registry] { state->SampleLoop(registry); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

void HttpServer::Stop() {
  if (impl_->sampler.joinable()) {
    {
      absl::MutexLock lock(&impl_->sampler_mu);
      impl_->stop_sampler = true;  // wakes SampleLoop's Await
    }
    impl_->sampler.join();
  }
  if (!impl_->thread.joinable()) return;
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace strata::coordinator
