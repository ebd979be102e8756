// Request parsing and response shapes of `strata serve`'s OpenAI-compatible API.
#include "cli/openai_api.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::cli::openai {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

CompletionRequest ParseOk(Endpoint e, const json& body) {
  auto r = ParseRequest(e, body.dump());
  if (auto* err = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body.dump() << " -> " << err->message;
    return {};
  }
  return std::get<CompletionRequest>(r);
}

ApiError ParseErr(Endpoint e, const std::string& body) {
  auto r = ParseRequest(e, body);
  if (auto* err = std::get_if<ApiError>(&r)) return *err;
  ADD_FAILURE() << body << " parsed without an error";
  return {};
}

TEST(OpenAiApiTest, CompletionDefaultsFollowOpenAi) {
  CompletionRequest r = ParseOk(Endpoint::kCompletions, {{"model", "m"}, {"prompt", "Hello"}});
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "Hello");
  EXPECT_FALSE(r.prompt_is_ids);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_FALSE(r.seed_given);
  EXPECT_FALSE(r.stream);
}

TEST(OpenAiApiTest, ParsesSamplingStopSeedAndStream) {
  CompletionRequest r = ParseOk(Endpoint::kCompletions,
                                {{"model", "m"},
                                 {"prompt", {"one prompt"}},
                                 {"max_tokens", 7},
                                 {"temperature", 0},
                                 {"top_p", 0.5},
                                 {"seed", 42},
                                 {"stop", {"\n", "END"}},
                                 {"n", 1},
                                 {"stream", true},
                                 {"stream_options", {{"include_usage", true}}},
                                 {"user", "someone"}});
  EXPECT_EQ(r.prompt, "one prompt");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_THAT(r.stop, ::testing::ElementsAre("\n", "END"));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);

  r = ParseOk(Endpoint::kCompletions, {{"model", "m"}, {"prompt", "x"}, {"stop", "###"}});
  EXPECT_THAT(r.stop, ::testing::ElementsAre("###"));
  r = ParseOk(Endpoint::kCompletions, {{"model", "m"}, {"prompt", {1, 2, 3}}});
  EXPECT_TRUE(r.prompt_is_ids);
  EXPECT_THAT(r.prompt_ids, ::testing::ElementsAre(1, 2, 3));
}

TEST(OpenAiApiTest, ParsesChatMessages) {
  CompletionRequest r =
      ParseOk(Endpoint::kChatCompletions,
              {{"model", "m"},
               {"messages",
                {{{"role", "developer"}, {"content", "Be brief."}},
                 {{"role", "user"},
                  {"content",
                   {{{"type", "text"}, {"text", "Hi "}}, {{"type", "text"}, {"text", "there"}}}}},
                 {{"role", "assistant"}, {"content", "Hello!"}},
                 {{"role", "user"}, {"content", "Bye"}}}},
               {"max_completion_tokens", 5}});
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.max_tokens, 5);
}

TEST(OpenAiApiTest, RejectsBadRequestsNamingTheParameter) {
  struct Case {
    std::string body;
    std::string param;
  };
  const Endpoint c = Endpoint::kCompletions;
  for (const Case& k : std::vector<Case>{
           {R"({"prompt":"x"})", "model"},
           {R"({"model":"m"})", "prompt"},
           {R"({"model":"m","prompt":"x","n":2})", "n"},
           {R"({"model":"m","prompt":"x","temperature":3})", "temperature"},
           {R"({"model":"m","prompt":"x","temperature":"hot"})", "temperature"},
           {R"({"model":"m","prompt":"x","top_p":1.5})", "top_p"},
           {R"({"model":"m","prompt":"x","max_tokens":0})", "max_tokens"},
           {R"({"model":"m","prompt":"x","max_tokens":2.5})", "max_tokens"},
           {R"({"model":"m","prompt":"x","stop":["a","b","c","d","e"]})", "stop"},
           {R"({"model":"m","prompt":"x","stop":7})", "stop"},
           {R"({"model":"m","prompt":"x","logprobs":3})", "logprobs"},
           {R"({"model":"m","prompt":"x","echo":true})", "echo"},
           {R"({"model":"m","prompt":"x","presence_penalty":0.5})", "presence_penalty"},
           {R"({"model":"m","prompt":["a","b"]})", "prompt"},
           {R"({"model":"m","prompt":"x","stream":"yes"})", "stream"},
           {R"({"model":"m","prompt":"x","stream_options":{"include_usage":true}})",
            "stream_options"},
       }) {
    ApiError e = ParseErr(c, k.body);
    EXPECT_EQ(e.http_status, 400) << k.body;
    EXPECT_EQ(e.param, k.param) << k.body << " -> " << e.message;
    EXPECT_EQ(e.type, "invalid_request_error");
  }
  ApiError e = ParseErr(c, "{not json");
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.code, "invalid_json");
  e = ParseErr(Endpoint::kChatCompletions, R"({"model":"m","messages":[]})");
  EXPECT_EQ(e.param, "messages");
  e = ParseErr(Endpoint::kChatCompletions,
               R"({"model":"m","messages":[{"role":"tool","content":"x"}]})");
  EXPECT_EQ(e.param, "messages[0].role");
  e = ParseErr(Endpoint::kChatCompletions,
               R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})");
  EXPECT_EQ(e.param, "messages[0].content");
}

TEST(OpenAiApiTest, ErrorJsonHasOpenAisShape) {
  ApiError e;
  e.message = "bad";
  e.param = "model";
  json j = ErrorJson(e);
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "model");
  EXPECT_TRUE(j["error"]["code"].is_null());

  EXPECT_EQ(FromStatus(absl::UnavailableError("no route")).http_status, 503);
  EXPECT_EQ(FromStatus(absl::ResourceExhaustedError("kv full")).http_status, 503);
  EXPECT_EQ(FromStatus(absl::InvalidArgumentError("x")).http_status, 400);
  EXPECT_EQ(FromStatus(absl::InternalError("x")).http_status, 500);
  EXPECT_THAT(FromStatus(absl::UnavailableError("no route")).message, HasSubstr("no route"));
}

TEST(OpenAiApiTest, ResponsesAndChunks) {
  CompletionRequest chat = ParseOk(
      Endpoint::kChatCompletions,
      {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}, {"stream", true}});
  json full = CompletionResponse(chat, "chatcmpl-1", 100, "m", "Hello", "stop", {5, 2});
  EXPECT_EQ(full["object"], "chat.completion");
  EXPECT_EQ(full["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(full["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(full["usage"]["total_tokens"], 7);

  json first = StreamChunk(chat, "chatcmpl-1", 100, "m", "", "", true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  json last = StreamChunk(chat, "chatcmpl-1", 100, "m", "", "length", false);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());

  CompletionRequest plain = ParseOk(Endpoint::kCompletions, {{"model", "m"}, {"prompt", "x"}});
  json c = StreamChunk(plain, "cmpl-1", 100, "m", " Paris", "", false);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], " Paris");
  EXPECT_EQ(SseEvent(json{{"a", "x\ny"}}), "data: {\"a\":\"x\\ny\"}\n\n");
}

}  // namespace
}  // namespace strata::cli::openai
