#include "cli/openai_api.h"

#include <cmath>
#include <limits>

namespace strata::cli::openai {
namespace {

using nlohmann::json;

ApiError Invalid(std::string message, std::string param, std::string code = "") {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

json NullIfEmpty(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// Reads an optional number field in [lo, hi]; returns false with `error` set when invalid.
bool ReadNumber(const json& body,
                const char* name,
                double lo,
                double hi,
                std::optional<double>* out,
                ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) {
    *error = Invalid(std::string(name) + " must be a number", name);
    return false;
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    *error = Invalid(std::string(name) + " must be between " + json(lo).dump() + " and " +
                         json(hi).dump() + ", got " + it->dump(),
                     name);
    return false;
  }
  *out = v;
  return true;
}

bool ReadInt(const json& body,
             const char* name,
             int64_t lo,
             int64_t hi,
             std::optional<int64_t>* out,
             ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer()) {
    *error = Invalid(std::string(name) + " must be an integer", name);
    return false;
  }
  // Large unsigned values (seeds) arrive as number_unsigned.
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi)) {
    *error = Invalid(std::string(name) + " is too large", name);
    return false;
  }
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) {
    *error = Invalid(std::string(name) + " must be between " + std::to_string(lo) + " and " +
                         std::to_string(hi) + ", got " + std::to_string(v),
                     name);
    return false;
  }
  *out = v;
  return true;
}

bool Truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.empty();
}

// Parameters that would change the output and are not implemented: 400 when set.
std::optional<ApiError> CheckUnsupported(const json& body) {
  for (const char* name : {"echo",
                           "logprobs",
                           "top_logprobs",
                           "suffix",
                           "logit_bias",
                           "tools",
                           "tool_choice",
                           "functions",
                           "function_call"}) {
    auto it = body.find(name);
    if (it != body.end() && Truthy(*it)) {
      return Invalid(std::string(name) + " is not supported by this server", name);
    }
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    auto it = body.find(name);
    if (it != body.end() && Truthy(*it)) {
      return Invalid(std::string(name) + " is not supported (use repetition_penalty)", name);
    }
  }
  if (auto it = body.find("best_of");
      it != body.end() && !it->is_null() && !(it->is_number_integer() && it->get<int64_t>() == 1)) {
    return Invalid("best_of must be 1", "best_of");
  }
  if (auto it = body.find("response_format"); it != body.end() && !it->is_null()) {
    if (!it->is_object() || it->value("type", "") != "text") {
      return Invalid("response_format must be {\"type\": \"text\"}", "response_format");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> ParseStop(const json& body, std::vector<std::string>* stop) {
  auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) {
    if (!it->get<std::string>().empty()) stop->push_back(it->get<std::string>());
    return std::nullopt;
  }
  if (!it->is_array() || it->size() > 4) {
    return Invalid("stop must be a string or a list of at most 4 strings", "stop");
  }
  for (const json& s : *it) {
    if (!s.is_string()) return Invalid("stop must contain strings", "stop");
    if (!s.get<std::string>().empty()) stop->push_back(s.get<std::string>());
  }
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const json& body, CompletionRequest* r) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) {
    return Invalid("you must provide a prompt", "prompt");
  }
  const json* p = &*it;
  // A list holding one prompt (a string or a list of ids) is that prompt.
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) {
    p = &(*p)[0];
  } else if (p->is_array() && !p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
    return Invalid("only one prompt per request is supported", "prompt");
  }
  if (p->is_string()) {
    r->prompt = p->get<std::string>();
    return std::nullopt;
  }
  if (p->is_array()) {
    for (const json& id : *p) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return Invalid("prompt must be a string or a list of token ids", "prompt");
      }
      r->prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    r->prompt_is_ids = true;
    return std::nullopt;
  }
  return Invalid("prompt must be a string or a list of token ids", "prompt");
}

std::optional<ApiError> ParseMessages(const json& body, CompletionRequest* r) {
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty()) {
    return Invalid("messages must be a non-empty list", "messages");
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      return Invalid(where + " must be an object with a role", where + ".role");
    }
    std::string role = m["role"].get<std::string>();
    if (role == "developer") role = "system";
    if (role != "system" && role != "user" && role != "assistant") {
      return Invalid(where + ".role '" + m["role"].get<std::string>() +
                         "' is not supported (system, developer, user, assistant)",
                     where + ".role");
    }
    std::string content;
    auto c = m.find("content");
    if (c == m.end() || c->is_null()) {
      if (role != "assistant") return Invalid(where + ".content is missing", where + ".content");
    } else if (c->is_string()) {
      content = c->get<std::string>();
    } else if (c->is_array()) {
      for (const json& part : *c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return Invalid(where + ".content: only text parts are supported", where + ".content");
        }
        content += part["text"].get<std::string>();
      }
    } else {
      return Invalid(where + ".content must be a string or a list of text parts",
                     where + ".content");
    }
    r->messages.push_back({role, std::move(content)});
  }
  return std::nullopt;
}

}  // namespace

json ErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", NullIfEmpty(e.param)},
            {"code", NullIfEmpty(e.code)}}}};
}

ApiError FromStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      e.http_status = 400;
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "service_unavailable";
      e.message = "the swarm cannot serve this request now: " + e.message;
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      e.code = "internal_error";
      break;
  }
  return e;
}

std::variant<CompletionRequest, ApiError> ParseRequest(Endpoint endpoint, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Invalid("We could not parse the JSON body of your request. Please send valid JSON.",
                   "",
                   "invalid_json");
  }
  if (!j.is_object()) return Invalid("the request body must be a JSON object", "");
  CompletionRequest r;
  r.endpoint = endpoint;
  if (!j.contains("model") || !j["model"].is_string() || j["model"].get<std::string>().empty()) {
    return Invalid("you must provide a model parameter", "model");
  }
  r.model = j["model"].get<std::string>();
  if (auto e = CheckUnsupported(j)) return *e;
  if (auto e = endpoint == Endpoint::kCompletions ? ParsePrompt(j, &r) : ParseMessages(j, &r)) {
    return *e;
  }
  ApiError error;
  std::optional<int64_t> n, max_tokens, max_completion_tokens, seed, top_k;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  if (!ReadInt(j, "n", 1, 128, &n, &error)) return error;
  if (n && *n != 1) return Invalid("n must be 1: one choice per request", "n");
  if (!ReadInt(j, "max_tokens", 1, 1 << 24, &max_tokens, &error)) return error;
  if (endpoint == Endpoint::kChatCompletions &&
      !ReadInt(j, "max_completion_tokens", 1, 1 << 24, &max_completion_tokens, &error)) {
    return error;
  }
  if (!ReadInt(j,
               "seed",
               std::numeric_limits<int64_t>::min(),
               std::numeric_limits<int64_t>::max(),
               &seed,
               &error)) {
    return error;
  }
  if (!ReadInt(j, "top_k", 0, 1 << 20, &top_k, &error)) return error;
  if (!ReadNumber(j, "temperature", 0, 2, &temperature, &error)) return error;
  if (!ReadNumber(j, "top_p", 0, 1, &top_p, &error)) return error;
  if (!ReadNumber(j, "min_p", 0, 1, &min_p, &error)) return error;
  if (!ReadNumber(j, "repetition_penalty", 1e-3, 100, &repetition_penalty, &error)) return error;
  if (auto e = ParseStop(j, &r.stop)) return *e;
  if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return Invalid("stream must be a boolean", "stream");
    r.stream = it->get<bool>();
  }
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Invalid("stream_options must be an object", "stream_options");
    if (!r.stream) return Invalid("stream_options needs stream: true", "stream_options");
    r.include_usage = it->value("include_usage", false);
  }

  if (max_completion_tokens) max_tokens = max_completion_tokens;
  if (max_tokens) r.max_tokens = static_cast<int>(*max_tokens);
  // OpenAI semantics: no top-k / min-p cut unless asked for.
  r.sampling.temperature = static_cast<float>(temperature.value_or(1.0));
  // top_p 0 keeps only the most likely token, as a tiny nucleus does.
  r.sampling.top_p = static_cast<float>(std::max(top_p.value_or(1.0), 1e-6));
  r.sampling.top_k = static_cast<int>(top_k.value_or(0));
  r.sampling.min_p = static_cast<float>(min_p.value_or(0.0));
  r.sampling.repeat_penalty = static_cast<float>(repetition_penalty.value_or(1.0));
  if (seed) {
    r.sampling.seed = static_cast<uint64_t>(*seed);
    r.seed_given = true;
  }
  return r;
}

json CompletionResponse(const CompletionRequest& request,
                        const std::string& id,
                        int64_t created,
                        const std::string& model,
                        const std::string& text,
                        const std::string& finish_reason,
                        const Usage& usage) {
  json choice;
  if (request.endpoint == Endpoint::kChatCompletions) {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", text}}},
              {"logprobs", nullptr},
              {"finish_reason", finish_reason}};
  } else {
    choice = {
        {"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  }
  return {{"id", id},
          {"object",
           request.endpoint == Endpoint::kChatCompletions ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"system_fingerprint", nullptr},
          {"choices", json::array({choice})},
          {"usage",
           {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.prompt_tokens + usage.completion_tokens}}}};
}

json StreamChunk(const CompletionRequest& request,
                 const std::string& id,
                 int64_t created,
                 const std::string& model,
                 const std::string& text,
                 const std::string& finish_reason,
                 bool first) {
  json choice;
  if (request.endpoint == Endpoint::kChatCompletions) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish_reason.empty())) delta["content"] = text;
    choice = {{"index", 0},
              {"delta", std::move(delta)},
              {"logprobs", nullptr},
              {"finish_reason", NullIfEmpty(finish_reason)}};
  } else {
    choice = {{"index", 0},
              {"text", text},
              {"logprobs", nullptr},
              {"finish_reason", NullIfEmpty(finish_reason)}};
  }
  json chunk = {{"id", id},
                {"object",
                 request.endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk"
                                                                : "text_completion"},
                {"created", created},
                {"model", model},
                {"system_fingerprint", nullptr},
                {"choices", json::array({std::move(choice)})}};
  if (request.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json UsageChunk(const CompletionRequest& request,
                const std::string& id,
                int64_t created,
                const std::string& model,
                const Usage& usage) {
  return {{"id", id},
          {"object",
           request.endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk"
                                                          : "text_completion"},
          {"created", created},
          {"model", model},
          {"system_fingerprint", nullptr},
          {"choices", json::array()},
          {"usage",
           {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.prompt_tokens + usage.completion_tokens}}}};
}

std::string SseEvent(const json& data) {
  // dump() escapes control characters, so the event never contains a raw newline.
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

json ModelJson(const std::string& id, int64_t created) {
  return {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "strata"}};
}

}  // namespace strata::cli::openai
