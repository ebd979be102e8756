// strata bench --nodes N: decode speed, time to first token and inter-token latency through a
// local swarm of real processes, beside the local engine in the same run; optionally through
// emulated links (--delay-ms) and with concurrent sessions (--sessions).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/bench.h"
#include "cli/commands.h"
#include "client/local_model.h"
#include "client/swarm_client.h"
#include "common/status.h"
#include "harness/local_swarm.h"
#include "model/sampling.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

constexpr int kNodeKvMib = 2048;  // KV memory per node: long prompts times many sessions

struct RunStats {
  double ttft_ms = 0;      // median over sessions: prompt in -> first token's logits
  double step_p50_ms = 0;  // inter-token latency over all sessions' steps
  double step_p95_ms = 0;
  double session_tokens_per_s = 0;    // median over sessions, decode only
  double aggregate_tokens_per_s = 0;  // all generated tokens / wall time of the run
};

// Prefill `prompt` and decode `tokens` greedy steps (no stop token) in one session.
absl::Status OneSession(client::InferenceSession& s,
                        const std::vector<int32_t>& prompt,
                        int tokens,
                        double* ttft_ms,
                        std::vector<double>* steps) {
  const absl::Time t0 = absl::Now();
  auto logits = s.Feed(prompt);
  if (!logits.ok()) return logits.status();
  int32_t token = model::Argmax(*logits);
  *ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  for (int i = 0; i < tokens; ++i) {
    const absl::Time t = absl::Now();
    const int32_t next[1] = {token};
    logits = s.Feed(next);
    if (!logits.ok()) return logits.status();
    token = model::Argmax(*logits);
    steps->push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
  }
  return absl::OkStatus();
}

// Runs `sessions` sessions at once; `open` makes each one's InferenceSession.
absl::StatusOr<RunStats> Measure(
    int sessions,
    const std::vector<int32_t>& prompt,
    int tokens,
    const std::function<absl::StatusOr<std::unique_ptr<client::InferenceSession>>()>& open) {
  std::vector<std::unique_ptr<client::InferenceSession>> opened;
  for (int i = 0; i < sessions; ++i) {
    auto s = open();
    if (!s.ok()) return s.status();
    opened.push_back(std::move(*s));
  }
  std::vector<double> ttft(sessions), rates(sessions);
  std::vector<std::vector<double>> steps(sessions);
  std::vector<absl::Status> status(sessions);
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back([&, i] {
      status[i] = OneSession(*opened[i], prompt, tokens, &ttft[i], &steps[i]);
      double total = 0;
      for (double ms : steps[i]) total += ms;
      rates[i] = total > 0 ? steps[i].size() / (total / 1000) : 0;
    });
  }
  for (auto& t : threads) t.join();
  const double wall_s = absl::ToDoubleSeconds(absl::Now() - start);
  for (const absl::Status& st : status) {
    if (!st.ok()) return st;
  }
  RunStats r;
  std::vector<double> all_steps;
  for (auto& s : steps) all_steps.insert(all_steps.end(), s.begin(), s.end());
  r.ttft_ms = Median(ttft);
  r.step_p50_ms = Percentile(all_steps, 50);
  r.step_p95_ms = Percentile(all_steps, 95);
  r.session_tokens_per_s = Median(rates);
  r.aggregate_tokens_per_s = sessions * (tokens + 1) / wall_s;
  return r;
}

nlohmann::json ToJson(const RunStats& r) {
  return {{"ttft_ms", r.ttft_ms},
          {"step_p50_ms", r.step_p50_ms},
          {"step_p95_ms", r.step_p95_ms},
          {"decode_tokens_per_s", r.session_tokens_per_s},
          {"aggregate_tokens_per_s", r.aggregate_tokens_per_s}};
}

}  // namespace

absl::StatusOr<std::unique_ptr<harness::LocalSwarm>> StartBenchSwarm(
    const std::string& model,
    const std::vector<double>& delays_ms,
    const std::vector<harness::NodeSpec>& nodes) {
  harness::LocalSwarmOptions so;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  so.strata_binary = self.string();
  so.linkem_binary = (self.parent_path() / "strata-linkem").string();
  so.model_path = model;
  so.links = std::any_of(delays_ms.begin(), delays_ms.end(), [](double d) { return d > 0; });
  so.stderr_path = "/dev/null";
  ASSIGN_OR_RETURN(std::unique_ptr<harness::LocalSwarm> swarm, harness::LocalSwarm::Start(so));
  for (const harness::NodeSpec& spec : nodes) RETURN_IF_ERROR(swarm->AddNode(spec).status());
  RETURN_IF_ERROR(swarm->WaitUntilServing(static_cast<int>(nodes.size())));
  return swarm;
}

std::vector<harness::NodeSpec> ReplicatedSpans(int n_layers, int spans, int replicas, int threads) {
  std::vector<harness::NodeSpec> out;
  for (int r = 0; r < replicas; ++r) {
    for (int i = 0; i < spans; ++i) {
      harness::NodeSpec spec;
      spec.layers = absl::StrFormat("%d:%d", n_layers * i / spans, n_layers * (i + 1) / spans);
      spec.threads = threads;
      spec.kv_memory_mib = kNodeKvMib;
      out.push_back(spec);
    }
  }
  return out;
}

absl::Status SetBenchDelay(harness::LocalSwarm& swarm, double delay_ms) {
  if (!swarm.options().links) return absl::OkStatus();
  return swarm.SetDelay(delay_ms);
}

ClientOptions BenchClientOptions(const harness::LocalSwarm& swarm,
                                 const std::string& model,
                                 int threads) {
  ClientOptions co;
  co.coordinators = swarm.coordinators();
  co.model_path = model;
  co.threads = threads;
  co.step_timeout_ms = 120000;
  return co;
}

int RunSwarmBench(const BenchFlags& f) {
  const std::string model = f.model.empty() ? DefaultModelPath() : f.model;

  // The local engine first, in this process, with the same prompt and steps.
  client::LocalModelOptions lo;
  lo.path = model;
  lo.threads = f.threads;
  auto local = client::LocalModel::Load(lo);
  if (!local.ok()) return Fail(std::string(local.status().message()));
  const int n_layers = (*local)->model().hparams().n_layer;
  const std::vector<int32_t> prompt =
      BenchPrompt(f.prompt_tokens, (*local)->model().hparams().n_vocab);
  auto local_stats = Measure(1, prompt, f.decode_tokens, [&] { return (*local)->NewSession(); });
  if (!local_stats.ok()) return Fail(std::string(local_stats.status().message()));
  local->reset();

  harness::NodeSpec spec;
  spec.max_layers = (n_layers + f.nodes - 1) / f.nodes;
  spec.threads = f.node_threads;
  spec.kv_memory_mib = kNodeKvMib;
  auto swarm = StartBenchSwarm(model, f.delays_ms, std::vector<harness::NodeSpec>(f.nodes, spec));
  if (!swarm.ok()) return Fail(std::string(swarm.status().message()));
  auto client = client::SwarmClient::Create(BenchClientOptions(**swarm, model, f.threads));
  if (!client.ok()) return Fail(std::string(client.status().message()));

  nlohmann::json out;
  out["model"] = model;
  out["nodes"] = f.nodes;
  out["prompt_tokens"] = f.prompt_tokens;
  out["decode_tokens"] = f.decode_tokens;
  out["local"] = ToJson(*local_stats);
  out["runs"] = nlohmann::json::array();
  if (!f.json) {
    std::printf("local engine: decode %.1f tokens/s, first token %.1f ms, step p50 %.2f ms\n",
                local_stats->session_tokens_per_s,
                local_stats->ttft_ms,
                local_stats->step_p50_ms);
    std::printf("%-9s %-9s %-12s %-11s %-11s %-11s %-12s %-10s\n",
                "delay_ms",
                "sessions",
                "decode_tok/s",
                "ttft_ms",
                "step_p50",
                "step_p95",
                "aggregate/s",
                "bound_ms");
  }
  double step0 = 0;
  for (double delay : f.delays_ms) {
    absl::Status st = SetBenchDelay(**swarm, delay);
    if (!st.ok()) return Fail(std::string(st.message()));
    for (int sessions : f.sessions) {
      std::vector<RunStats> runs;
      for (int r = 0; r < std::max(1, f.repeat); ++r) {
        auto stats = Measure(
            sessions, prompt, f.decode_tokens, [&] { return (*client)->NewInferenceSession(); });
        if (!stats.ok()) return Fail(std::string(stats.status().message()));
        runs.push_back(*stats);
      }
      // The run with the median aggregate throughput.
      std::sort(runs.begin(), runs.end(), [](const RunStats& a, const RunStats& b) {
        return a.aggregate_tokens_per_s < b.aggregate_tokens_per_s;
      });
      const RunStats& s = runs[runs.size() / 2];
      if (delay == 0 && sessions == 1) step0 = s.step_p50_ms;
      // The step-time bound: (N+1) traversals of the delay plus the compute of a step.
      const double bound = step0 > 0 ? (f.nodes + 1) * delay + step0 : 0;
      nlohmann::json j = ToJson(s);
      j["delay_ms"] = delay;
      j["sessions"] = sessions;
      if (bound > 0 && sessions == 1) j["step_bound_ms"] = bound;
      out["runs"].push_back(j);
      if (!f.json) {
        std::printf("%-9.0f %-9d %-12.1f %-11.1f %-11.2f %-11.2f %-12.1f %-10s\n",
                    delay,
                    sessions,
                    s.session_tokens_per_s,
                    s.ttft_ms,
                    s.step_p50_ms,
                    s.step_p95_ms,
                    s.aggregate_tokens_per_s,
                    bound > 0 && sessions == 1 ? absl::StrFormat("%.2f", bound).c_str() : "-");
        std::fflush(stdout);
      }
    }
  }
  if (f.json) std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace strata::cli
