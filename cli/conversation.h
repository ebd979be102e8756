// Multi-turn prompts: the model's chat template over a whole conversation. The SDK's
// GenerateRequest carries one user message (and a system message); `strata chat` and
// `strata serve` need every turn, so they build the prompt tokens here and generate from them.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace strata::cli {

// The prompt tokens of `messages` with an assistant turn opened at the end, rendered by the
// model's own chat template (so a single user message gives exactly what
// client::PromptTokens gives for a chat request). A model without a template gets plain chatml.
// INVALID_ARGUMENT when the conversation is empty or the template rejects it.
absl::StatusOr<std::vector<int32_t>> ConversationTokens(
    const text::Tokenizer& tokenizer, const std::vector<text::ChatMessage>& messages);

}  // namespace strata::cli
