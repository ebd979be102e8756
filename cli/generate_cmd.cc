// strata generate: text from a prompt, locally or (with --coordinator) through a swarm.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <random>

#include "cli/commands.h"
#include "client/generate.h"
#include "client/local_model.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

struct GenerateFlags {
  std::string model;
  std::string prompt;
  std::string system;
  bool chat = false;
  int max_tokens = 128;
  float temperature = 0.7f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int64_t seed = -1;
  int threads = 0;
  bool json = false;
  std::vector<std::string> stop;
};

absl::StatusOr<std::vector<int32_t>> PromptTokens(const model::Tokenizer& tok,
                                                  const GenerateFlags& f) {
  if (!f.chat) return tok.Encode(f.prompt, /*add_special=*/true, /*parse_special=*/false);
  std::vector<model::ChatMessage> messages;
  if (!f.system.empty()) messages.push_back({"system", f.system});
  messages.push_back({"user", f.prompt});
  auto text = model::ApplyChatTemplate(tok, messages, true);
  if (!text.ok()) return text.status();
  return tok.EncodeChatPrompt(*text);
}

int RunGenerate(const GenerateFlags& f) {
  client::LocalModelOptions lo;
  lo.path = f.model.empty() ? DefaultModelPath() : f.model;
  lo.threads = f.threads;
  lo.show_progress = !f.json;
  auto lm = client::LocalModel::Load(lo);
  if (!lm.ok()) return Fail(std::string(lm.status().message()));
  auto prompt = PromptTokens((*lm)->tokenizer(), f);
  if (!prompt.ok()) return Fail(std::string(prompt.status().message()));
  auto session = (*lm)->NewSession();
  if (!session.ok()) return Fail(std::string(session.status().message()));

  client::GenerateOptions go;
  go.max_tokens = f.max_tokens;
  go.stop = f.stop;
  go.sampling.temperature = f.temperature;
  go.sampling.top_k = f.top_k;
  go.sampling.top_p = f.top_p;
  go.sampling.min_p = f.min_p;
  go.sampling.repeat_penalty = f.repeat_penalty;
  go.sampling.seed = f.seed >= 0 ? static_cast<uint64_t>(f.seed) : std::random_device{}();
  auto stream = [&](int32_t, std::string_view piece) {
    if (!f.json && !piece.empty()) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  auto result = client::Generate(**session, (*lm)->tokenizer(), *prompt, go, stream);
  if (!result.ok()) return Fail(std::string(result.status().message()));
  if (f.json) {
    nlohmann::json j;
    j["text"] = result->text;
    j["token_ids"] = result->tokens;
    j["prompt_tokens"] = result->prompt_tokens;
    j["completion_tokens"] = result->tokens.size();
    j["ttft_ms"] = result->ttft_ms;
    j["decode_tokens_per_s"] = result->decode_tokens_per_s;
    j["finish_reason"] = result->finish_reason;
    j["seed"] = go.sampling.seed;
    j["model"] = lo.path;
    j["threads"] = (*lm)->pool().num_threads();
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("\n");
    std::fprintf(stderr, "[%d prompt tokens, %zu generated, first token %.0f ms, %.1f tokens/s]\n",
                 result->prompt_tokens, result->tokens.size(), result->ttft_ms,
                 result->decode_tokens_per_s);
  }
  return 0;
}

}  // namespace

void RegisterGenerate(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--prompt", flags->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", flags->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", flags->system, "System message (with --chat)");
  cmd->add_option("--max-tokens", flags->max_tokens, "Tokens to generate")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", flags->temperature, "Sampling temperature; 0 = greedy")
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", flags->top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", flags->top_p, "Nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", flags->min_p, "Drop tokens below min-p x the best (0 = off)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", flags->repeat_penalty, "Repetition penalty (1 = off)");
  cmd->add_option("--seed", flags->seed, "Random seed (default: random)");
  cmd->add_option("--stop", flags->stop, "Stop before this string (repeatable)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  cmd->add_flag("--json", flags->json, "Print one JSON object instead of streaming text");
  cmd->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

}  // namespace strata::cli
