// strata bench: prefill and decode speed of the local engine.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <vector>

#include "absl/time/clock.h"
#include "cli/bench.h"
#include "cli/commands.h"
#include "client/local_model.h"
#include "kernels/ops.h"
#include "model/sampling.h"
#include "nlohmann/json.hpp"

namespace strata::cli {

std::vector<int32_t> BenchPrompt(int n, int vocab) {
  std::vector<int32_t> prompt(n);
  uint64_t x = 0x2545F4914F6CDD1Dull;
  for (int32_t& t : prompt) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    t = static_cast<int32_t>(100 + x % (vocab - 200));
  }
  return prompt;
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 50); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

int RunLocalBench(const BenchFlags& f) {
  client::LocalModelOptions lo;
  lo.path = f.model.empty() ? DefaultModelPath() : f.model;
  lo.threads = f.threads;
  lo.show_progress = !f.json;
  auto lm = client::LocalModel::Load(lo);
  if (!lm.ok()) return Fail(std::string(lm.status().message()));
  const int n_vocab = (*lm)->model().hparams().n_vocab;
  if (f.prompt_tokens + f.decode_tokens > (*lm)->model().hparams().n_ctx_train) {
    return Fail("prompt + decode tokens exceed the model's context length");
  }

  const std::vector<int32_t> prompt = BenchPrompt(f.prompt_tokens, n_vocab);

  std::vector<double> prefill_tps, decode_tps, ttft_ms;
  for (int r = 0; r < f.repeat; ++r) {
    auto session = (*lm)->NewSession();
    if (!session.ok()) return Fail(std::string(session.status().message()));
    absl::Time t0 = absl::Now();
    auto logits = (*session)->Feed(prompt);
    if (!logits.ok()) return Fail(std::string(logits.status().message()));
    int32_t token = model::Argmax(*logits);
    absl::Time t1 = absl::Now();
    for (int i = 0; i < f.decode_tokens; ++i) {
      const int32_t next[1] = {token};
      logits = (*session)->Feed(next);
      if (!logits.ok()) return Fail(std::string(logits.status().message()));
      token = model::Argmax(*logits);
    }
    absl::Time t2 = absl::Now();
    const double prefill_s = absl::ToDoubleSeconds(t1 - t0);
    ttft_ms.push_back(prefill_s * 1e3);
    prefill_tps.push_back(f.prompt_tokens / prefill_s);
    decode_tps.push_back(f.decode_tokens / absl::ToDoubleSeconds(t2 - t1));
    if (!f.json) {
      std::fprintf(stderr, "run %d: prefill %.1f tok/s, decode %.1f tok/s\n", r + 1,
                   prefill_tps.back(), decode_tps.back());
    }
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  nlohmann::json j;
  j["model"] = lo.path;
  j["threads"] = (*lm)->pool().num_threads();
  j["isa"] = std::string(kernels::ActiveIsa());
  j["prompt_tokens"] = f.prompt_tokens;
  j["decode_tokens"] = f.decode_tokens;
  j["prefill_tokens_per_s"] = Median(prefill_tps);
  j["decode_tokens_per_s"] = Median(decode_tps);
  j["ttft_ms"] = Median(ttft_ms);
  j["peak_rss_mib"] = usage.ru_maxrss / 1024.0;
  j["repeat"] = f.repeat;
  if (f.json) {
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("model        %s\nthreads      %d (%s)\n", lo.path.c_str(),
                (*lm)->pool().num_threads(), std::string(kernels::ActiveIsa()).c_str());
    std::printf("prefill      %.1f tokens/s (%d-token prompt)\n", Median(prefill_tps),
                f.prompt_tokens);
    std::printf("decode       %.1f tokens/s (%d tokens)\n", Median(decode_tps), f.decode_tokens);
    std::printf("first token  %.1f ms\npeak RSS     %.1f MiB\n", Median(ttft_ms),
                usage.ru_maxrss / 1024.0);
  }
  return 0;
}

void RegisterBench(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prefill and decode speed");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  cmd->add_option("--prompt-tokens", flags->prompt_tokens, "Prompt length for prefill")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--decode-tokens", flags->decode_tokens, "Tokens to decode")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--repeat", flags->repeat, "Runs (the median is reported)")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--json", flags->json, "Print JSON");
  cmd->add_option("--nodes", flags->nodes,
                  "Benchmark a local swarm of this many node processes instead of the engine");
  cmd->add_option("--delay-ms", flags->delays_ms,
                  "Swarm: one-way delay per hop, swept (e.g. --delay-ms 0,5,20,50)")
      ->delimiter(',');
  cmd->add_option("--sessions", flags->sessions,
                  "Swarm: concurrent sessions, swept (e.g. --sessions 1,4,16,32)")
      ->delimiter(',');
  cmd->add_option("--node-threads", flags->node_threads, "Swarm: threads per node process");
  cmd->callback([flags, exit_code] {
    *exit_code = flags->nodes > 0 ? RunSwarmBench(*flags) : RunLocalBench(*flags);
  });
}

}  // namespace strata::cli
