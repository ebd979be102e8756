// strata coordinator: run a swarm's coordinator (membership, span assignment, routing).
//
// The first line on stdout is exactly
//   coordinator listening grpc=HOST:PORT[ http=HOST:PORT]
// with the ports actually bound (so `--listen 127.0.0.1:0` can be used by scripts and tests).
// With --http, the dashboard's and the metrics' URLs follow on stderr.
// Runs until SIGINT or SIGTERM, then shuts down and exits 0.
#include <signal.h>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/signals.h"
#include "common/logging.h"
#include "coordinator/server.h"

namespace strata::cli {
namespace {

struct CoordinatorFlags {
  std::string listen;
  std::string http;
  std::string model_id;
  int64_t ttl_ms = 6000;
  int64_t heartbeat_ms = 1000;
  bool rebalance = true;
};

int RunCoordinator(const CoordinatorFlags& f) {
  if (f.ttl_ms <= f.heartbeat_ms) {
    return Fail(
        "--ttl-ms must be longer than --heartbeat-ms, or every node would expire between "
        "heartbeats");
  }
  coordinator::CoordinatorOptions options;
  options.grpc_address = f.listen;
  options.http_address = f.http;
  options.registry.model_id = f.model_id;
  options.registry.ttl = absl::Milliseconds(f.ttl_ms);
  options.registry.heartbeat_interval = absl::Milliseconds(f.heartbeat_ms);
  if (!f.rebalance) options.registry.balance_quality = 0;

  // Before any server thread starts, so that every thread inherits the blocked mask.
  InstallStopSignals();

  auto server = coordinator::CoordinatorServer::Start(options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::string line = "coordinator listening grpc=" + (*server)->grpc_address().ToString();
  if ((*server)->http_address() != nullptr) {
    line += " http=" + (*server)->http_address()->ToString();
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if ((*server)->http_address() != nullptr) {
    const std::string http = (*server)->http_address()->ToString();
    STRATA_LOG(Info) << "dashboard at http://" << http << "/ , Prometheus metrics at http://"
                     << http << "/metrics";
  }

  const int signal_number = WaitForStopSignal();
  STRATA_LOG(Info) << "coordinator: " << (signal_number == SIGINT ? "SIGINT" : "SIGTERM")
                   << ", shutting down";
  (*server)->Shutdown();
  return 0;
}

}  // namespace

void RegisterCoordinator(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<CoordinatorFlags>();
  CLI::App* cmd = app.add_subcommand(
      "coordinator",
      "Run a swarm coordinator: tracks nodes by their heartbeats, assigns layer spans to joining "
      "nodes and answers route queries. Prints 'coordinator listening grpc=HOST:PORT[ "
      "http=HOST:PORT]' once bound; stops on SIGINT/SIGTERM.");
  cmd->add_option("--listen", flags->listen, "gRPC address HOST:PORT (port 0: any free port)")
      ->required();
  cmd->add_option("--http",
                  flags->http,
                  "Also serve HTTP on HOST:PORT: the dashboard (/), JSON (/api/swarm, /api/route, "
                  "/api/history), Prometheus metrics (/metrics) and /healthz");
  cmd->add_option("--model-id",
                  flags->model_id,
                  "Only accept nodes serving this model (default: the first node's model)");
  cmd->add_option("--ttl-ms", flags->ttl_ms, "Drop a node after this long without a heartbeat")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{100}, int64_t{3'600'000}));
  cmd->add_option("--heartbeat-ms", flags->heartbeat_ms, "Heartbeat interval told to nodes")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{10}, int64_t{600'000}));
  cmd->add_flag("!--no-rebalance",
                flags->rebalance,
                "Move nodes only to fill uncovered layers, never to even out throughput");
  cmd->callback([flags, exit_code] { *exit_code = RunCoordinator(*flags); });
}

}  // namespace strata::cli
