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
      std::fprintf(stderr,
                   "run %d: prefill %.1f tok/s, decode %.1f tok/s\n",
                   r + 1,
                   prefill_tps.back(),
                   decode_tps.back());
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
    std::printf("model        %s\nthreads      %d (%s)\n",
                lo.path.c_str(),
                (*lm)->pool().num_threads(),
                std::string(kernels::ActiveIsa()).c_str());
    std::printf(
        "prefill      %.1f tokens/s (%d-token prompt)\n", Median(prefill_tps), f.prompt_tokens);
    std::printf("decode       %.1f tokens/s (%d tokens)\n", Median(decode_tps), f.decode_tokens);
    std::printf(
        "first token  %.1f ms\npeak RSS     %.1f MiB\n", Median(ttft_ms), usage.ru_maxrss / 1024.0);
  }
  return 0;
}

void RegisterBench(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Measure prefill and decode speed: of the local engine, or through a local swarm (--nodes), "
      "its failover recovery (--recovery) or speculative decoding (--spec-sweep)");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  cmd->add_option("--prompt-tokens", flags->prompt_tokens, "Prompt length for prefill")
      ->check(CLI::Range(1, 1 << 16));
  CLI::Option* decode =
      cmd->add_option("--decode-tokens",
                      flags->decode_tokens,
                      "Tokens to decode (default 128; 48 per prompt with --spec-sweep)")
          ->check(CLI::Range(1, 1 << 16));
  CLI::Option* repeat =
      cmd->add_option("--repeat",
                      flags->repeat,
                      "Runs (the median is reported; default 3); with --recovery, failures per "
                      "delay and context (default 10)")
          ->check(CLI::Range(1, 100));
  cmd->add_flag("--json", flags->json, "Print JSON");
  cmd->add_option("--nodes",
                  flags->nodes,
                  "Benchmark a local swarm of this many node processes instead of the engine; "
                  "with --recovery or --spec-sweep, this many spans, each served by two nodes "
                  "(default 3)");
  CLI::Option* delays =
      cmd->add_option("--delay-ms",
                      flags->delays_ms,
                      "Swarm: one-way delay per hop, swept (e.g. --delay-ms 0,5,20,50; default 0, "
                      "0,20 with --recovery, 0,5,20,50 with --spec-sweep)")
          ->delimiter(',');
  cmd->add_option("--sessions",
                  flags->sessions,
                  "Swarm: concurrent sessions, swept (e.g. --sessions 1,4,16,32)")
      ->delimiter(',');
  cmd->add_option("--node-threads", flags->node_threads, "Swarm: threads per node process");
  CLI::Option* recovery = cmd->add_flag(
      "--recovery",
      flags->recovery,
      "Swarm: failover recovery time, kill -9 of a hop -> the next token (p50/p95 over --repeat "
      "failures, hitting the first, middle and last hop in turn) and the replay within it");
  cmd->add_option("--context",
                  flags->contexts,
                  "Recovery: prompt tokens of the session a node dies under, swept (default "
                  "128,1024)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  CLI::Option* sweep = cmd->add_flag(
      "--spec-sweep",
      flags->spec_sweep,
      "Swarm: speculative decoding (M1 chain, M2 tree, M3 pipelined, M4 dsi with ngram, self:K "
      "and oracle drafters) against plain decoding (M0) on four chat prompts, greedy; fails "
      "unless every run gives the plain tokens");
  cmd->add_flag("--spec-quick",
                flags->spec_quick,
                "Spec sweep: only M0, M1 with ngram, and M1-M4 with the oracle at 0.7");
  cmd->add_option("--spec-draft",
                  flags->spec_drafts,
                  "Spec sweep: a draft model (same vocabulary) to add M1 and M3 rows for; "
                  "repeatable (e.g. one made by `strata quantize`)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--spec-modes",
                  flags->spec_modes,
                  "Spec sweep: only the rows of these modes (chain, tree, pipelined, dsi), beside "
                  "M0")
      ->delimiter(',')
      ->check(CLI::IsMember({"chain", "tree", "pipelined", "dsi"}));
  cmd->add_option("--spec-drafters",
                  flags->spec_drafters,
                  "Spec sweep: only the rows of these drafters (ngram, self, draft, oracle, or a "
                  "whole name such as oracle:0.9), beside M0")
      ->delimiter(',');
  cmd->add_option("--gamma", flags->gamma, "Spec sweep: drafts per pass (start value)")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_flag(
      "--fixed-gamma", flags->fixed_gamma, "Spec sweep: keep gamma fixed instead of adapting it");
  cmd->add_flag("--spec-paired",
                flags->spec_paired,
                "Spec sweep: run M0 again right before every speculative row and compare the "
                "row with that run (where the machine drifts as much as the rows differ, as on "
                "compute-bound delays)");
  recovery->excludes(sweep);
  cmd->callback([flags, exit_code, decode, repeat, delays] {
    BenchFlags& f = *flags;
    if (f.recovery || f.spec_sweep) {
      if (f.nodes <= 0) f.nodes = 3;
      if (delays->count() == 0) {
        f.delays_ms = f.recovery ? std::vector<double>{0, 20} : std::vector<double>{0, 5, 20, 50};
      }
      if (f.recovery && repeat->count() == 0) f.repeat = 10;
      if (f.spec_sweep && decode->count() == 0) f.decode_tokens = 48;
    }
    if (f.recovery) {
      *exit_code = RunRecoveryBench(f);
    } else if (f.spec_sweep) {
      *exit_code = RunSpecSweep(f);
    } else {
      *exit_code = f.nodes > 0 ? RunSwarmBench(f) : RunLocalBench(f);
    }
  });
}

}  // namespace strata::cli
