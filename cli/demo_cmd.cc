// strata demo: a whole swarm on this machine — a coordinator and N nodes on loopback — answering
// one chat prompt with the default model, then stopped again.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "common/grpc_util.h"
#include "common/subprocess.h"
#include "model/llama.h"
#include "strata/client.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "transport/channels.h"

namespace strata::cli {
namespace {

struct DemoFlags {
  int nodes = 3;
  std::string model;
  std::string prompt = "Explain in three sentences how a relay race works.";
  int max_tokens = 96;
  float temperature = 0.0f;
  int threads = 0;
  bool keep = false;
};

std::atomic<bool> g_interrupted{false};

// Value of `key=` in a "word key=value key=value" line.
std::string Field(const std::string& line, const std::string& key) {
  for (absl::string_view part : absl::StrSplit(line, ' ')) {
    if (absl::StartsWith(part, key + "=")) return std::string(part.substr(key.size() + 1));
  }
  return "";
}

std::string Self() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

int RunDemo(const DemoFlags& f) {
  // SIGINT/SIGTERM go to a watcher thread; children get them from us, in order.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread watcher([set] {
    int sig = 0;
    sigwait(&set, &sig);
    g_interrupted = true;
    std::fprintf(stderr, "\ninterrupted: stopping the swarm\n");
  });
  watcher.detach();

  const std::string model = f.model.empty() ? DefaultModelPath() : f.model;
  if (!std::filesystem::exists(model)) return Fail("model file not found: " + model);
  const std::string self = Self();
  auto opened = model::Model::Open(model);
  if (!opened.ok()) return Fail(std::string(opened.status().message()));
  const int n_layers = (*opened)->hparams().n_layer;
  std::vector<std::unique_ptr<Subprocess>> procs;  // stopped in reverse order on return
  auto cleanup = [&] {
    for (auto it = procs.rbegin(); it != procs.rend(); ++it) (*it)->Stop(absl::Seconds(5));
    procs.clear();
  };

  auto coordinator = Subprocess::Start(
      {self, "coordinator", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}, "/dev/null");
  if (!coordinator.ok()) return Fail(std::string(coordinator.status().message()));
  procs.push_back(std::move(*coordinator));
  auto line = procs.back()->ReadLine(absl::Seconds(20));
  if (!line.ok()) {
    cleanup();
    return Fail("the coordinator did not start: " + std::string(line.status().message()));
  }
  const std::string coord = Field(*line, "grpc"), http = Field(*line, "http");
  std::printf("coordinator  %s  (dashboard http://%s/)\n", coord.c_str(), http.c_str());

  // Start the nodes one at a time so each sees the coverage of the previous ones.
  auto cstub = v1::Coordinator::NewStub(transport::ChannelCache::Default().Get(coord));
  const int per_node = (n_layers + f.nodes - 1) / f.nodes;
  for (int i = 0; i < f.nodes && !g_interrupted; ++i) {
    std::vector<std::string> args = {self, "node", "--coordinator", coord, "--model", model,
                                     "--listen", "127.0.0.1:0", "--quiet",
                                     "--max-layers", std::to_string(per_node)};
    if (f.threads > 0) args.insert(args.end(), {"--threads", std::to_string(f.threads)});
    auto node = Subprocess::Start(args);
    if (!node.ok()) {
      cleanup();
      return Fail(std::string(node.status().message()));
    }
    procs.push_back(std::move(*node));
    auto nl = procs.back()->ReadLine(absl::Seconds(120));
    if (!nl.ok()) {
      cleanup();
      return Fail("node " + std::to_string(i + 1) + " did not start: " +
                  std::string(nl.status().message()));
    }
    std::printf("node %d       %s  id=%s  layers %s\n", i + 1, Field(*nl, "grpc").c_str(),
                Field(*nl, "id").c_str(), Field(*nl, "layers").c_str());
  }
  // Wait until every layer is served by an online node.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!g_interrupted) {
    v1::SwarmSnapshot snap;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    grpc::Status st = cstub->GetSwarm(&ctx, v1::SwarmRequest(), &snap);
    bool online = st.ok() && snap.uncovered_layers_size() == 0 && snap.nodes_size() == f.nodes;
    for (const auto& n : snap.nodes()) online = online && n.state() == v1::NODE_STATE_ONLINE;
    if (online) break;
    if (absl::Now() > deadline) {
      cleanup();
      return Fail("the swarm did not cover every layer within 60 s");
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (g_interrupted) {
    cleanup();
    return 130;
  }

  ClientOptions co;
  co.coordinators = {coord};
  co.model_path = model;
  co.threads = f.threads;
  auto client = Client::Connect(co);
  if (!client.ok()) {
    cleanup();
    return Fail(std::string(client.status().message()));
  }
  GenerateRequest req;
  req.prompt = f.prompt;
  req.chat = true;
  req.max_tokens = f.max_tokens;
  req.sampling.temperature = f.temperature;
  std::printf("\n> %s\n\n", f.prompt.c_str());
  std::fflush(stdout);
  auto result = (*client)->Generate(req, [](int32_t, std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return !g_interrupted.load();
  });
  std::printf("\n\n");
  if (!result.ok()) {
    cleanup();
    return Fail(std::string(result.status().message()));
  }
  std::printf("route:");
  for (const RouteHop& h : result->route) {
    std::printf("  %s [%d-%d]", h.node_id.c_str(), h.first_layer, h.last_layer - 1);
  }
  std::printf("\n%d prompt tokens, %zu generated, first token %.0f ms, %.1f tokens/s\n",
              result->prompt_tokens, result->token_ids.size(), result->ttft_ms,
              result->decode_tokens_per_s);
  std::fflush(stdout);
  if (f.keep && !g_interrupted) {
    std::printf("swarm running; Ctrl-C stops it\n");
    std::fflush(stdout);
    while (!g_interrupted) absl::SleepFor(absl::Milliseconds(200));
  }
  cleanup();
  return 0;
}

}  // namespace

void RegisterDemo(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<DemoFlags>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Start a local swarm (coordinator + nodes on loopback) and generate an answer");
  cmd->add_option("--nodes", flags->nodes, "Nodes to start")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--prompt", flags->prompt, "Chat prompt")->capture_default_str();
  cmd->add_option("--max-tokens", flags->max_tokens, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", flags->temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "CPU threads per process (default: all)");
  cmd->add_flag("--keep-running", flags->keep, "Keep the swarm up after the answer (Ctrl-C stops)");
  cmd->callback([flags, exit_code] { *exit_code = RunDemo(*flags); });
}

}  // namespace strata::cli
