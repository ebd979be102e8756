// Turning a GenerateRequest into what the engine consumes: prompt token ids and GenerateOptions.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "client/generate.h"
#include "strata/client.h"
#include "text/tokenizer.h"

namespace strata::client {

// Plain prompts get the model's BOS when it wants one; chat prompts go through its template.
absl::StatusOr<std::vector<int32_t>> PromptTokens(const text::Tokenizer& tokenizer,
                                                  const GenerateRequest& request);

GenerateOptions ToGenerateOptions(const GenerateRequest& request);

}  // namespace strata::client
