#include "client/prompt.h"

#include "text/chat_template.h"

namespace strata::client {

absl::StatusOr<std::vector<int32_t>> PromptTokens(const text::Tokenizer& tokenizer,
                                                  const GenerateRequest& request) {
  if (!request.chat) return tokenizer.Encode(request.prompt, /*add_special=*/true, false);
  std::vector<text::ChatMessage> messages;
  if (!request.system.empty()) messages.push_back({"system", request.system});
  messages.push_back({"user", request.prompt});
  auto text = text::ApplyChatTemplate(tokenizer, messages, /*add_generation_prompt=*/true);
  if (!text.ok()) return text.status();
  return tokenizer.EncodeChatPrompt(*text);
}

GenerateOptions ToGenerateOptions(const GenerateRequest& request) {
  GenerateOptions o;
  o.max_tokens = request.max_tokens;
  o.stop = request.stop;
  o.sampling.temperature = request.sampling.temperature;
  o.sampling.top_k = request.sampling.top_k;
  o.sampling.top_p = request.sampling.top_p;
  o.sampling.min_p = request.sampling.min_p;
  o.sampling.repeat_penalty = request.sampling.repeat_penalty;
  o.sampling.seed = request.sampling.seed;
  return o;
}

}  // namespace strata::client
