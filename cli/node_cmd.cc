// strata node: serve a span of layers to the swarm.
#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/signals.h"
#include "node/node_server.h"

namespace strata::cli {
namespace {

struct NodeFlags {
  std::string coordinators;
  std::string model;
  std::string layers = "auto";
  std::string listen = "127.0.0.1:0";
  std::string advertise;
  std::string id;
  int max_layers = 0;
  int threads = 0;
  std::string device = "cpu";
  int kv_memory_mib = 1024;
  int max_sessions = 64;
  int idle_timeout_s = 600;
  int drain_timeout_s = 30;
  bool quiet = false;
};

int RunNode(const NodeFlags& f) {
  node::NodeOptions o;
  o.model_path = f.model.empty() ? DefaultModelPath() : f.model;
  for (absl::string_view c : absl::StrSplit(f.coordinators, ',', absl::SkipEmpty())) {
    o.coordinators.emplace_back(c);
  }
  if (f.layers != "auto") {
    std::vector<std::string> parts = absl::StrSplit(f.layers, ':');
    int a = -1, b = -1;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &a) || !absl::SimpleAtoi(parts[1], &b)) {
      return Fail("--layers must be A:B (layers A to B-1) or auto, got '" + f.layers + "'");
    }
    o.auto_span = false;
    o.first_layer = a;
    o.last_layer = b;
  }
  o.listen = f.listen;
  o.advertise = f.advertise;
  o.node_id = f.id;
  o.max_layers = f.max_layers;
  o.threads = f.threads;
  o.device = f.device;
  o.worker.kv_bytes = static_cast<size_t>(f.kv_memory_mib) << 20;
  o.worker.max_sessions = f.max_sessions;
  o.worker.idle_timeout = absl::Seconds(f.idle_timeout_s);
  const bool quiet = f.quiet;
  o.log = [quiet](const std::string& line) {
    if (!quiet) std::fprintf(stderr, "%s\n", line.c_str());
  };
  InstallStopSignals();
  auto node = node::NodeServer::Start(o);
  if (!node.ok()) return Fail(std::string(node.status().message()));
  std::printf("node listening grpc=%s id=%s layers=%d:%d\n", (*node)->address().c_str(),
              (*node)->node_id().c_str(), (*node)->first_layer(), (*node)->last_layer());
  std::fflush(stdout);
  WaitForStopSignal();
  if (!quiet) {
    std::fprintf(stderr, "node %s leaving: moving its sessions elsewhere\n",
                 (*node)->node_id().c_str());
  }
  (*node)->Drain(absl::Seconds(f.drain_timeout_s));
  (*node)->Shutdown();
  return 0;
}

}  // namespace

void RegisterNode(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<NodeFlags>();
  CLI::App* cmd = app.add_subcommand("node", "Serve a span of the model's layers to a swarm");
  cmd->add_option("--coordinator", flags->coordinators,
                  "Coordinator address(es), comma-separated (host:port[,host:port...])");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--layers", flags->layers, "Layers to serve: A:B (A to B-1) or auto")
      ->capture_default_str();
  cmd->add_option("--listen", flags->listen, "Address to serve on (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--advertise", flags->advertise,
                  "Address announced to the swarm (default: the bound address)");
  cmd->add_option("--id", flags->id, "Node id (default: random)");
  cmd->add_option("--max-layers", flags->max_layers,
                  "Most layers to hold when the coordinator chooses (0: all)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  cmd->add_option("--device", flags->device, "Where to run the span: cpu or cuda:N")
      ->capture_default_str();
  cmd->add_option("--kv-memory", flags->kv_memory_mib, "KV cache memory cap, MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-sessions", flags->max_sessions, "Concurrent sessions")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--idle-timeout", flags->idle_timeout_s, "Close sessions idle this long, s")
      ->capture_default_str();
  cmd->add_option("--drain-timeout", flags->drain_timeout_s,
                  "On SIGTERM, wait this long for sessions to move elsewhere, s")
      ->capture_default_str();
  cmd->add_flag("--quiet", flags->quiet, "Print only the listening line");
  cmd->callback([flags, exit_code] { *exit_code = RunNode(*flags); });
}

}  // namespace strata::cli
