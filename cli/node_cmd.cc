// strata node: serve a span of layers to the swarm.
//
// The first line on stdout is exactly
//   node listening grpc=HOST:PORT id=ID layers=A:B[ http=HOST:PORT]
// Progress goes to stderr; when stderr is a terminal, a one-line live status (span, rows/s,
// sessions, queue, KV use) is then redrawn in place about once a second.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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
  bool device_given = false;  // --device appeared on the command line
  std::string devices;        // --devices: cuda:N,cuda:M,... (tensor-parallel)
  int kv_memory_mib = 1024;
  int max_sessions = 64;
  int idle_timeout_s = 600;
  int drain_timeout_s = 30;
  std::string http;
  bool quiet = false;
  bool no_status = false;
  bool no_nccl = false;
};

// Writes operator messages to stderr, and redraws a one-line live status under them when stderr
// is a terminal (messages clear the status line first, so they never mix).
class StatusLine {
 public:
  explicit StatusLine(bool enabled) : enabled_(enabled) {}
  ~StatusLine() { Stop(); }

  void Log(const std::string& line) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::fprintf(stderr, "%s%s\n", drawn_ ? "\r\033[K" : "", line.c_str());
    drawn_ = false;
    std::fflush(stderr);
  }

  // Starts redrawing `node`'s status once a second.
  void Start(const node::NodeServer* node) {
    if (!enabled_) return;
    thread_ = std::thread([this, node] { Loop(node); });
  }

  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;  // wakes Loop's Await
    }
    if (thread_.joinable()) thread_.join();
    absl::MutexLock lock(&mu_);
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
    std::fflush(stderr);
  }

 private:
  static std::string Render(const node::NodeServer& node, double rows_per_s) {
    const node::WorkerStats& s = node.stats();
    const double layers = std::max(1, node.last_layer() - node.first_layer());
    const double offered =
        node.throughput().layer_ms > 0 ? 1000.0 / (node.throughput().layer_ms * layers) : 0;
    return absl::StrFormat(
               "%s  layers %d-%d  offered %.0f tok/s  %.1f rows/s  %d sessions  queue %d  "
               "KV %.1f/%.0f MiB  %lld rows  %lld errors",
               node.node_id(),
               node.first_layer(),
               node.last_layer() - 1,
               offered,
               rows_per_s,
               s.active_sessions.load(),
               s.queue_depth.load(),
               s.kv_used_bytes.load() / 1048576.0,
               s.kv_capacity_bytes.load() / 1048576.0,
               static_cast<long long>(s.total_rows.load()),
               static_cast<long long>(s.errors.load())) +
           (node.links_summary().empty() ? "" : "  " + node.links_summary());
  }

  void Loop(const node::NodeServer* node) ABSL_LOCKS_EXCLUDED(mu_) {
    int64_t rows = node->stats().total_rows.load();
    auto last = std::chrono::steady_clock::now();
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Seconds(1))) {
      const auto now = std::chrono::steady_clock::now();
      const int64_t now_rows = node->stats().total_rows.load();
      const double seconds = std::chrono::duration<double>(now - last).count();
      const double rate = seconds > 0 ? (now_rows - rows) / seconds : 0;
      rows = now_rows;
      last = now;
      std::string line = Render(*node, rate);
      // Never wrap: a wrapped line cannot be redrawn in place.
      if (line.size() + 1 > columns_) line.resize(columns_ > 1 ? columns_ - 1 : 0);
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      std::fflush(stderr);
      drawn_ = true;
    }
  }

  const bool enabled_;
  const size_t columns_ = TerminalColumns();
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool drawn_ ABSL_GUARDED_BY(mu_) = false;  // a status line is on screen
  std::thread thread_;

  static size_t TerminalColumns() {
    if (const char* c = std::getenv("COLUMNS")) {
      int n = 0;
      if (absl::SimpleAtoi(c, &n) && n > 10) return n;
    }
    return 120;
  }
};

// The device string NodeOptions takes from --device and --devices: "cpu", "cuda:N" or a
// comma-separated list of cuda:N (a tensor-parallel span); "" with *error set when they are bad.
std::string ResolveDevice(const NodeFlags& f, std::string* error) {
  if (f.devices.empty()) return f.device;
  for (absl::string_view item : absl::StrSplit(f.devices, ',')) {
    int index = -1;
    if (!absl::ConsumePrefix(&item, "cuda:") || !absl::SimpleAtoi(item, &index) || index < 0) {
      *error = "--devices must be a comma-separated list of cuda:N (e.g. cuda:0,cuda:1), got '" +
               f.devices + "'";
      return "";
    }
  }
  if (f.device_given && f.device != f.devices) {
    *error =
        "--device " + f.device + " and --devices " + f.devices + " disagree (give one of them)";
    return "";
  }
  return f.devices;
}

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
  if (f.id.find_first_of(" \t\n=") != std::string::npos) {
    return Fail("--id may not contain spaces or '='");
  }
  o.node_id = f.id;
  o.max_layers = f.max_layers;
  o.threads = f.threads;
  std::string device_error;
  o.device = ResolveDevice(f, &device_error);
  if (!device_error.empty()) return Fail(device_error);
  o.worker.kv_bytes = static_cast<size_t>(f.kv_memory_mib) << 20;
  o.worker.max_sessions = f.max_sessions;
  o.worker.idle_timeout = absl::Seconds(f.idle_timeout_s);
  o.http = f.http;
  o.nccl = !f.no_nccl;
  const bool quiet = f.quiet;
  StatusLine status(!quiet && !f.no_status && isatty(STDERR_FILENO));
  o.log = [quiet, &status](const std::string& line) {
    if (!quiet) status.Log(line);
  };
  InstallStopSignals();
  auto node = node::NodeServer::Start(o);
  if (!node.ok()) return Fail(std::string(node.status().message()));
  std::string listening = absl::StrFormat("node listening grpc=%s id=%s layers=%d:%d",
                                          (*node)->address(),
                                          (*node)->node_id(),
                                          (*node)->first_layer(),
                                          (*node)->last_layer());
  if (!(*node)->http_address().empty()) listening += " http=" + (*node)->http_address();
  std::printf("%s\n", listening.c_str());
  std::fflush(stdout);
  status.Start(node->get());
  WaitForStopSignal();
  status.Stop();
  if (!quiet) {
    std::fprintf(
        stderr, "node %s leaving: moving its sessions elsewhere\n", (*node)->node_id().c_str());
  }
  (*node)->Drain(absl::Seconds(f.drain_timeout_s));
  (*node)->Shutdown();
  return 0;
}

}  // namespace

void RegisterNode(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<NodeFlags>();
  CLI::App* cmd = app.add_subcommand("node", "Serve a span of the model's layers to a swarm");
  cmd->add_option("--coordinator",
                  flags->coordinators,
                  "Coordinator address(es), comma-separated (host:port[,host:port...])");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--layers", flags->layers, "Layers to serve: A:B (A to B-1) or auto")
      ->capture_default_str();
  cmd->add_option("--listen", flags->listen, "Address to serve on (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--advertise",
                  flags->advertise,
                  "Address announced to the swarm (default: the bound address)");
  cmd->add_option("--id", flags->id, "Node id (default: random)");
  cmd->add_option("--max-layers",
                  flags->max_layers,
                  "Most layers to hold when the coordinator chooses (0: all)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  CLI::Option* device =
      cmd->add_option("--device", flags->device, "Where to run the span: cpu or cuda:N")
          ->capture_default_str();
  cmd->add_option("--devices",
                  flags->devices,
                  "Split the span's heads and FFN columns over several GPUs of this machine "
                  "(tensor-parallel): cuda:N,cuda:M,...");
  cmd->add_option("--kv-memory", flags->kv_memory_mib, "KV cache memory cap, MiB")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-sessions", flags->max_sessions, "Concurrent sessions")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--idle-timeout", flags->idle_timeout_s, "Close sessions idle this long, s")
      ->capture_default_str();
  cmd->add_option("--drain-timeout",
                  flags->drain_timeout_s,
                  "On SIGTERM, wait this long for sessions to move elsewhere, s")
      ->capture_default_str();
  cmd->add_option("--http",
                  flags->http,
                  "Also serve /metrics (Prometheus) and /healthz over HTTP on HOST:PORT "
                  "(port 0: any free port)");
  cmd->add_flag("--no-nccl",
                flags->no_nccl,
                "Send hidden states to co-located CUDA nodes over gRPC only (by default they go "
                "over NCCL when both hops run on GPUs of this host)");
  cmd->add_flag("--quiet", flags->quiet, "Print only the listening line");
  cmd->add_flag("--no-status",
                flags->no_status,
                "No live status line on stderr (it is shown only when stderr is a terminal)");
  cmd->callback([flags, exit_code, device] {
    flags->device_given = device->count() > 0;
    *exit_code = RunNode(*flags);
  });
}

}  // namespace strata::cli
