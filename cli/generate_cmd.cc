// strata generate: text from a prompt, locally or (with --coordinator) through a swarm.
#include <cstdio>
#include <iostream>
#include <random>

#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "client/generate.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "client/run_request.h"
#include "nlohmann/json.hpp"
#include "strata/client.h"

namespace strata::cli {
namespace {

struct GenerateFlags {
  std::string coordinators;
  std::string model;
  GenerateRequest request;
  int64_t seed = -1;
  int threads = 0;
  bool json = false;
};

nlohmann::json ResultJson(const GenerateResult& r, uint64_t seed) {
  nlohmann::json j;
  j["text"] = r.text;
  j["token_ids"] = r.token_ids;
  j["prompt_tokens"] = r.prompt_tokens;
  j["completion_tokens"] = r.token_ids.size();
  j["ttft_ms"] = r.ttft_ms;
  j["decode_tokens_per_s"] = r.decode_tokens_per_s;
  j["finish_reason"] = r.finish_reason;
  j["seed"] = seed;
  if (r.passes > 0) {
    j["passes"] = r.passes;
    j["accepted_per_pass"] = r.accepted_per_pass;
    j["wasted_rows"] = r.wasted_rows;
  }
  return j;
}

absl::StatusOr<GenerateResult> GenerateLocally(const GenerateFlags& f,
                                               const std::string& path,
                                               const TokenCallback& stream) {
  client::LocalModelOptions lo;
  lo.path = path;
  lo.threads = f.threads;
  lo.show_progress = !f.json;
  auto lm = client::LocalModel::Load(lo);
  if (!lm.ok()) return lm.status();
  std::vector<std::unique_ptr<client::LocalChain>> owned;
  std::vector<client::Chain*> chains;
  for (int i = 0; i < client::ChainsFor(f.request); ++i) {
    auto chain = (*lm)->NewChain();
    if (!chain.ok()) return chain.status();
    chains.push_back(chain->get());
    owned.push_back(std::move(*chain));
  }
  client::RequestContext context{
      &(*lm)->embedder(), &(*lm)->head(), &(*lm)->tokenizer(), &(*lm)->pool(), path, f.threads};
  return client::RunRequest(f.request, context, chains, stream);
}

int RunGenerate(GenerateFlags f) {
  const std::string path = f.model.empty() ? DefaultModelPath() : f.model;
  f.request.sampling.seed = f.seed >= 0 ? static_cast<uint64_t>(f.seed) : std::random_device{}();
  auto stream = [&](int32_t, std::string_view piece) {
    if (!f.json && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  absl::StatusOr<GenerateResult> result;
  if (f.coordinators.empty()) {
    result = GenerateLocally(f, path, stream);
  } else {
    ClientOptions co;
    for (absl::string_view c : absl::StrSplit(f.coordinators, ',', absl::SkipEmpty())) {
      co.coordinators.emplace_back(c);
    }
    co.model_path = path;
    co.threads = f.threads;
    auto client = Client::Connect(co);
    if (!client.ok()) return Fail(std::string(client.status().message()));
    result = (*client)->Generate(f.request, stream);
  }
  if (!result.ok()) {
    if (!f.json) std::printf("\n");
    return Fail(std::string(result.status().message()));
  }
  if (f.json) {
    nlohmann::json j = ResultJson(*result, f.request.sampling.seed);
    if (!f.coordinators.empty()) {
      nlohmann::json route = nlohmann::json::array();
      for (const RouteHop& h : result->route) {
        route.push_back({{"node_id", h.node_id},
                         {"address", h.address},
                         {"first_layer", h.first_layer},
                         {"last_layer", h.last_layer}});
      }
      j["route"] = route;
    }
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[%d prompt tokens, %zu generated, first token %.0f ms, %.1f tokens/s]\n",
                 result->prompt_tokens,
                 result->token_ids.size(),
                 result->ttft_ms,
                 result->decode_tokens_per_s);
  }
  return 0;
}

// A flag check that parses the value with `parse` and fails with its message.
template <typename T>
CLI::Validator StatusValidator(absl::StatusOr<T> (*parse)(std::string_view), std::string name) {
  return CLI::Validator(
      [parse](std::string& value) {
        absl::StatusOr<T> parsed = parse(value);
        return parsed.ok() ? std::string() : std::string(parsed.status().message());
      },
      "",
      std::move(name));
}

}  // namespace

void AddSpeculativeFlags(CLI::App* cmd, SpeculativeOptions* sp) {
  cmd->add_option_function<std::string>(
         "--speculative",
         [sp](const std::string& v) { sp->drafter = *ParseDrafter(v); },
         "Speculative decoding drafter: none, ngram, draft:PATH, self:K")
      ->check(StatusValidator<Drafter>(ParseDrafter, "DRAFTER"))
      ->default_str(DrafterName(sp->drafter));
  cmd->add_option_function<std::string>(
         "--spec-mode",
         [sp](const std::string& v) { sp->mode = *ParseSpeculativeMode(v); },
         "chain, tree, pipelined or dsi")
      ->check(StatusValidator<SpeculativeMode>(ParseSpeculativeMode, "MODE"))
      ->default_str(std::string(SpeculativeModeName(sp->mode)));
  cmd->add_option("--gamma", sp->gamma, "Drafts per pass (start value)")
      ->capture_default_str()
      ->check(CLI::Range(0, 32));
  cmd->add_flag("!--fixed-gamma", sp->adaptive, "Keep gamma fixed instead of adapting it");
  cmd->add_option("--tree-budget", sp->tree_budget, "Draft nodes per tree")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--in-flight",
                  sp->max_in_flight,
                  "Most runs in flight (pipelined, dsi; fewer where the links are fast)")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--replicas", sp->replicas, "Chains for dsi")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  cmd->add_flag("--rejection-sampling",
                sp->rejection_sampling,
                "Accept drafts with probability p/q instead of by exact match");
  cmd->add_flag("--verify-at-last-hop",
                sp->verify_at_last_hop,
                "The node serving the last layers verifies the drafts with the model's head and "
                "answers with tokens instead of hidden states (chain, pipelined, dsi)");
  cmd->add_flag("--drafter-shares-cores",
                sp->drafter_shares_cores,
                "The drafter runs on the cores the nodes compute on (a local swarm on this "
                "machine): pipelined runs then draft ahead only as far as a draft before a run "
                "would pay");
}

void RegisterGenerate(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  GenerateRequest& r = flags->request;
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  cmd->add_option("--coordinator",
                  flags->coordinators,
                  "Generate through a swarm: coordinator address(es), comma-separated");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--prompt", r.prompt, "Prompt text")->required();
  cmd->add_flag("--chat", r.chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", r.system, "System message (with --chat)");
  cmd->add_option("--max-tokens", r.max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", r.sampling.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", r.sampling.top_k, "Keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  cmd->add_option("--top-p", r.sampling.top_p, "Nucleus sampling mass (1 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", r.sampling.min_p, "Drop tokens below min-p x the best (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", r.sampling.repeat_penalty, "Repetition penalty (1 = off)")
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Random seed (default: random)");
  cmd->add_option("--stop", r.stop, "Stop before this string (repeatable)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  AddSpeculativeFlags(cmd, &r.speculative);
  cmd->add_flag("--json", flags->json, "Print one JSON object instead of streaming text");
  cmd->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

}  // namespace strata::cli
