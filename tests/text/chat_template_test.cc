#include "text/chat_template.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "tests/testing/paths.h"
#include "text/tokenizer.h"

namespace strata::text {
namespace {

nlohmann::json LoadFixture() {
  std::ifstream in(testkit::SourceDir() + "/tests/fixtures/tokenizer_smollm2.json");
  EXPECT_TRUE(in.good());
  return nlohmann::json::parse(in);
}

std::vector<text::ChatMessage> Messages(const nlohmann::json& j) {
  std::vector<text::ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"]});
  return out;
}

// Every rendering in the fixture was produced by jinja2 from the real template (see
// tools/make_tokenizer_fixtures.py): SmolLM2's own, and Meta's Llama 2 / Llama 3 chat templates.
TEST(ChatTemplateTest, MatchesJinjaRenderings) {
  const nlohmann::json fixture = LoadFixture();
  int checked = 0;
  for (const auto& tmpl : fixture["chat_templates"]) {
    const std::string source = tmpl["template"];
    text::ChatSpecialTokens special{tmpl["bos_token"], tmpl["eos_token"]};
    for (const auto& c : tmpl["cases"]) {
      auto out = text::ApplyChatTemplate(
          source, Messages(c["messages"]), c["add_generation_prompt"].get<bool>(), special);
      ASSERT_TRUE(out.ok()) << tmpl["name"] << "/" << c["name"] << ": " << out.status();
      EXPECT_EQ(*out, c["rendered"].get<std::string>())
          << tmpl["name"] << "/" << c["name"]
          << " add_generation_prompt=" << c["add_generation_prompt"];
      ++checked;
    }
  }
  EXPECT_GE(checked, 20);
}

TEST(ChatTemplateTest, SmolLm2InsertsDefaultSystemMessage) {
  auto gguf = gguf::GgufFile::Open(testkit::DefaultModelPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = text::Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();

  auto info = text::DetectChatTemplate((*tok)->chat_template());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->family, text::ChatTemplateFamily::kChatml);
  EXPECT_EQ(info->default_system,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");

  auto out = text::ApplyChatTemplate(**tok, {{"user", "Hi"}}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A system message of the caller's replaces the default.
  out = text::ApplyChatTemplate(**tok, {{"system", "Be terse."}, {"user", "Hi"}}, false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, PlainChatmlHasNoDefaultSystem) {
  auto out = text::ApplyChatTemplate(kChatmlTemplate, {{"user", "Hi"}}, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

// Expected strings written by hand from Meta's documented Llama 2 chat format, as given in
// https://huggingface.co/blog/llama2#how-to-prompt-llama-2 :
//   <s>[INST] <<SYS>>\n{{ system_prompt }}\n<</SYS>>\n\n{{ user_msg_1 }} [/INST]
//   {{ model_answer_1 }} </s><s>[INST] {{ user_msg_2 }} [/INST]
TEST(ChatTemplateTest, Llama2DocumentedFormat) {
  const std::string tmpl =
      "{% if messages[0]['role'] == 'system' %}...{{ bos_token + '[INST] ' + content.strip() + "
      "' [/INST]' }}...'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n'...";
  auto out = text::ApplyChatTemplate(tmpl,
                                     {{"system", "You are a helpful assistant."},
                                      {"user", "Hi there"},
                                      {"assistant", "Hello! How can I help?"},
                                      {"user", "Tell me a joke."}},
                                     /*add_generation_prompt=*/true);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHi there [/INST] "
            "Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]");
  out = text::ApplyChatTemplate(tmpl, {{"user", "Hi"}}, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<s>[INST] Hi [/INST]");
  // The official template raises an exception when roles do not alternate.
  EXPECT_EQ(text::ApplyChatTemplate(tmpl, {{"user", "a"}, {"user", "b"}}, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text::ApplyChatTemplate(tmpl, {{"assistant", "a"}}, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Expected strings written by hand from Meta's documented Llama 3 format
// (https://www.llama.com/docs/model-cards-and-prompt-formats/meta-llama-3/):
//   <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{ system_prompt }}<|eot_id|>
//   <|start_header_id|>user<|end_header_id|>\n\n{{ user_message }}<|eot_id|>
//   <|start_header_id|>assistant<|end_header_id|>\n\n
TEST(ChatTemplateTest, Llama3DocumentedFormat) {
  const std::string tmpl =
      "{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
      "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}";
  auto out = text::ApplyChatTemplate(
      tmpl,
      {{"system", "You are a helpful assistant."}, {"user", " What is the capital of France?\n"}},
      /*add_generation_prompt=*/true);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
            "assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital "
            "of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  out = text::ApplyChatTemplate(tmpl, {{"user", "Hi"}, {"assistant", "Hello"}}, false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>");
}

TEST(ChatTemplateTest, DetectsFamiliesAndRejectsOthers) {
  EXPECT_EQ(text::DetectChatTemplate("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text::DetectChatTemplate("{{ messages }}").status().code(),
            absl::StatusCode::kUnimplemented);
  // Mistral v0.1: [INST] without <<SYS>>.
  EXPECT_EQ(
      text::DetectChatTemplate("{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] "
                               "+ ' [/INST]' }}{% endfor %}")
          .status()
          .code(),
      absl::StatusCode::kUnimplemented);
  EXPECT_EQ(text::DetectChatTemplate("<|im_start|>...<|im_sep|>").status().code(),
            absl::StatusCode::kUnimplemented);
  auto llama3 = text::DetectChatTemplate("<|start_header_id|>x<|end_header_id|>");
  ASSERT_TRUE(llama3.ok());
  EXPECT_EQ(llama3->family, text::ChatTemplateFamily::kLlama3);
  EXPECT_EQ(text::ChatTemplateFamilyName(llama3->family), "llama3");
}

TEST(ChatTemplateTest, DefaultSystemWithEscapedNewlines) {
  // The same default written with "\n" escapes and double quotes.
  const std::string tmpl =
      "{% if messages[0]['role'] != 'system' %}{{ \"<|im_start|>system\\nBe kind.<|im_end|>\\n\" "
      "}}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
  auto info = text::DetectChatTemplate(tmpl);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->default_system, "Be kind.");
  auto out = text::ApplyChatTemplate(tmpl, {}, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, ModelWithoutTemplateIsFailedPrecondition) {
  text::TokenizerVocab v;
  v.tokens = {"a", "b"};
  v.pre = "gpt2";
  auto tok = text::Tokenizer::FromVocab(v);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(text::ApplyChatTemplate(**tok, {{"user", "x"}}, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace strata::text
