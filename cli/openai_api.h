// The OpenAI-compatible API of `strata serve`: request parsing and validation, and the JSON of
// responses, stream chunks and errors. Pure functions (no I/O), so they are unit-tested alone.
//
// Supported: POST /v1/completions and /v1/chat/completions with model, prompt (a string, one
// string in a list, or a list of token ids) or messages (roles system, developer, user,
// assistant; content a string or a list of text parts), max_tokens (chat: also
// max_completion_tokens), temperature [0, 2], top_p [0, 1], seed, stop (a string or up to 4),
// n = 1, stream, stream_options.include_usage, user (ignored), and the extensions top_k, min_p,
// repetition_penalty. Anything that would change the output and is not supported (n > 1, echo,
// logprobs, best_of > 1, suffix, non-zero presence/frequency penalties, logit_bias, tools,
// response_format other than text) is a 400 naming the parameter, never silently ignored.
//
// Defaults follow OpenAI: temperature 1, top_p 1, no top-k or min-p cut; max_tokens 16 for
// completions, and the rest of the context for chat.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "strata/client.h"
#include "text/chat_template.h"

namespace strata::cli::openai {

// An error as OpenAI reports it: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};

nlohmann::json ErrorJson(const ApiError& error);

// 400 for INVALID_ARGUMENT / OUT_OF_RANGE / FAILED_PRECONDITION; 503 for UNAVAILABLE,
// RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED (the swarm cannot serve now); 500 otherwise.
ApiError FromStatus(const absl::Status& status);

enum class Endpoint { kCompletions, kChatCompletions };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  // Completions: the prompt as text, or as token ids when given so.
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  bool prompt_is_ids = false;
  // Chat: the conversation.
  std::vector<text::ChatMessage> messages;
  std::optional<int> max_tokens;  // unset: the endpoint's default
  SamplingOptions sampling;       // seed filled in by the caller when !seed_given
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses and validates a request body; an ApiError (400) names the offending parameter.
std::variant<CompletionRequest, ApiError> ParseRequest(Endpoint endpoint, const std::string& body);

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// finish_reason: "stop" or "length" (a cancelled generation reports "stop").
nlohmann::json CompletionResponse(const CompletionRequest& request,
                                  const std::string& id,
                                  int64_t created,
                                  const std::string& model,
                                  const std::string& text,
                                  const std::string& finish_reason,
                                  const Usage& usage);

// One stream chunk. `text` is the new text; `finish_reason` empty -> null. For chat, `first`
// adds the assistant role to the delta.
nlohmann::json StreamChunk(const CompletionRequest& request,
                           const std::string& id,
                           int64_t created,
                           const std::string& model,
                           const std::string& text,
                           const std::string& finish_reason,
                           bool first);
// The last chunk with stream_options.include_usage: empty choices and the usage.
nlohmann::json UsageChunk(const CompletionRequest& request,
                          const std::string& id,
                          int64_t created,
                          const std::string& model,
                          const Usage& usage);

// "data: <json>\n\n"
std::string SseEvent(const nlohmann::json& data);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

// {"object": "model", "id", "created", "owned_by": "strata"}
nlohmann::json ModelJson(const std::string& id, int64_t created);

}  // namespace strata::cli::openai
