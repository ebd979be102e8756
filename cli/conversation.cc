#include "cli/conversation.h"

namespace strata::cli {

absl::StatusOr<std::vector<int32_t>> ConversationTokens(
    const model::Tokenizer& tokenizer, const std::vector<model::ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  absl::StatusOr<std::string> text =
      model::ApplyChatTemplate(tokenizer, messages, /*add_generation_prompt=*/true);
  if (!text.ok() && text.status().code() == absl::StatusCode::kFailedPrecondition) {
    text = model::ApplyChatTemplate(model::kChatmlTemplate, messages, true);
  }
  if (!text.ok()) return text.status();
  return tokenizer.EncodeChatPrompt(*text);
}

}  // namespace strata::cli
