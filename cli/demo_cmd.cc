// strata demo: a whole swarm on this machine — a coordinator and N nodes on loopback — answering
// one chat prompt with the default model, then stopped again.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "harness/local_swarm.h"
#include "model/llama.h"
#include "strata/client.h"

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

// SIGINT/SIGTERM set g_interrupted (from a watcher thread) instead of killing the process, so
// the swarm is always stopped in order.
void WatchStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    sigwait(&set, &sig);
    g_interrupted = true;
    std::fprintf(stderr, "\ninterrupted: stopping the swarm\n");
  }).detach();
}

int RunDemo(const DemoFlags& f) {
  WatchStopSignals();
  const std::string model = f.model.empty() ? DefaultModelPath() : f.model;
  auto opened = model::Model::Open(model);
  if (!opened.ok()) return Fail(std::string(opened.status().message()));
  const int n_layers = (*opened)->hparams().n_layer;
  if (f.nodes > n_layers) return Fail("more nodes than layers");

  harness::LocalSwarmOptions so;
  so.strata_binary = std::filesystem::read_symlink("/proc/self/exe").string();
  so.model_path = model;
  so.stderr_path = "/dev/null";
  auto swarm = harness::LocalSwarm::Start(so);
  if (!swarm.ok()) return Fail(std::string(swarm.status().message()));
  std::printf("coordinator  %s  (swarm JSON at http://%s/api/swarm)\n",
              (*swarm)->coordinator().c_str(),
              (*swarm)->http().c_str());
  // One node at a time, so each joins seeing the previous ones' coverage.
  harness::NodeSpec spec;
  spec.max_layers = (n_layers + f.nodes - 1) / f.nodes;
  spec.threads = f.threads;
  spec.kv_memory_mib = 512;
  for (int i = 0; i < f.nodes && !g_interrupted; ++i) {
    auto node = (*swarm)->AddNode(spec);
    if (!node.ok()) return Fail(std::string(node.status().message()));
    std::printf("node %d       %s  %s  layers %d-%d\n",
                i + 1,
                (*node)->address.c_str(),
                (*node)->id.c_str(),
                (*node)->first_layer,
                (*node)->last_layer - 1);
    std::fflush(stdout);
  }
  if (g_interrupted) return 130;
  absl::Status serving = (*swarm)->WaitUntilServing(f.nodes);
  if (!serving.ok()) return Fail(std::string(serving.message()));

  ClientOptions co;
  co.coordinators = {(*swarm)->coordinator()};
  co.model_path = model;
  co.threads = f.threads;
  auto client = Client::Connect(co);
  if (!client.ok()) return Fail(std::string(client.status().message()));
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
  if (!result.ok()) return Fail(std::string(result.status().message()));
  std::printf("route:");
  for (const RouteHop& h : result->route) {
    std::printf("  %s [layers %d-%d]", h.node_id.c_str(), h.first_layer, h.last_layer - 1);
  }
  std::printf("\n%d prompt tokens, %zu generated, first token %.0f ms, %.1f tokens/s\n",
              result->prompt_tokens,
              result->token_ids.size(),
              result->ttft_ms,
              result->decode_tokens_per_s);
  if (f.keep && !g_interrupted) {
    std::printf("the swarm keeps running; Ctrl-C stops it\n");
    std::fflush(stdout);
    while (!g_interrupted) absl::SleepFor(absl::Milliseconds(200));
  }
  std::fflush(stdout);
  return 0;  // the swarm stops when it goes out of scope
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
  cmd->add_option("--max-tokens", flags->max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--temperature", flags->temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "CPU threads per process (default: all)");
  cmd->add_flag("--keep-running", flags->keep, "Keep the swarm up after the answer (Ctrl-C stops)");
  cmd->callback([flags, exit_code] { *exit_code = RunDemo(*flags); });
}

}  // namespace strata::cli
