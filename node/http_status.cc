#include "node/http_status.h"

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/strings.h"
#include "httplib.h"

namespace strata::node {

struct NodeHttpServer::Impl {
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> done{false};
  std::string address;
};

NodeHttpServer::NodeHttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NodeHttpServer::~NodeHttpServer() { Stop(); }

const std::string& NodeHttpServer::address() const { return impl_->address; }

absl::StatusOr<std::unique_ptr<NodeHttpServer>> NodeHttpServer::Start(const std::string& address,
                                                                      NodeHttpHandlers handlers) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        StrCat("bad --http address '", address, "': expected HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  const bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
  if (bracketed) host = host.substr(1, host.size() - 2);

  auto impl = std::make_unique<Impl>();
  httplib::Server& server = impl->server;
  // SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, which would hide a port clash).
  server.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.set_keep_alive_timeout(2);
  server.Get("/healthz", [state = handlers.state](const httplib::Request&, httplib::Response& res) {
    const std::string s = state();
    res.status = s == "online" ? 200 : 503;
    res.set_content(s == "online" ? "ok\n" : s + "\n", "text/plain");
  });
  server.Get("/metrics",
             [metrics = handlers.metrics](const httplib::Request&, httplib::Response& res) {
               res.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8");
             });
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("Strata node. /healthz, /metrics (Prometheus)\n", "text/plain");
  });

  const int bound =
      port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(
        StrCat("cannot listen for HTTP on ", address, " (bad host or port in use)"));
  }
  impl->address = bracketed ? StrCat("[", host, "]:", bound) : StrCat(host, ":", bound);
  impl->thread = std::thread([s = &impl->server, done = &impl->done] {
    if (!s->listen_after_bind()) STRATA_LOG(Error) << "node HTTP server stopped with an error";
    done->store(true);
  });
  // stop() is a no-op until the server runs: wait for it, so that Stop() always ends it.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server.is_running() && !impl->done.load() && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<NodeHttpServer>(new NodeHttpServer(std::move(impl)));
}

void NodeHttpServer::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace strata::node
