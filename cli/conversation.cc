#include "cli/conversation.h"

namespace strata::cli {

absl::StatusOr<std::vector<int32_t>> ConversationTokens(
    const text::Tokenizer& tokenizer, const std::vector<text::ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  absl::StatusOr<std::string> text =
      text::ApplyChatTemplate(tokenizer, messages, /*add_generation_prompt=*/true);
  if (!text.ok() && text.status().code() == absl::StatusCode::kFailedPrecondition) {
    text = text::ApplyChatTemplate(text::kChatmlTemplate, messages, true);
  }
  if (!text.ok()) return text.status();
  return tokenizer.EncodeChatPrompt(*text);
}

}  // namespace strata::cli
