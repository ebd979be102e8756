// Chat prompt formatting without a Jinja engine.
//
// A model's `tokenizer.chat_template` is a Jinja program. Like llama.cpp's
// llm_chat_detect_template, we recognise the family from marker strings in the source and then
// render that family's format in C++. The output is byte-for-byte what the template renders
// (tests compare against jinja2 renderings of the real templates):
//
//   chatml  (source contains "<|im_start|>")       <|im_start|>{role}\n{content}<|im_end|>\n ...
//           A system turn written as a literal in the template (SmolLM2's "You are a helpful AI
//           assistant named SmolLM, trained by Hugging Face") is the default system message:
//           it is inserted when the first message is not a system message.
//   llama2  (source contains "[INST]" and "<<SYS>>") Meta's Llama-2-chat template:
//           <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
//           Roles must alternate user/assistant after an optional system message; contents are
//           stripped; add_generation_prompt changes nothing.
//   llama3  (source contains "<|start_header_id|>")  Meta-Llama-3-Instruct's template:
//           <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
//           contents are stripped.
//
// Anything else (Mistral's [INST] without <<SYS>>, Phi-4's <|im_sep|>, SmolVLM, Llama 3.1's tool
// and date preamble, ...) is UNIMPLEMENTED with a message naming what was found.
//
// Templates that write the BOS token's text (llama2, llama3) produce it in the prompt; tokenize
// such prompts with Tokenizer::EncodeChatPrompt, which then does not add a second BOS.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace strata::text {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

enum class ChatTemplateFamily { kChatml, kLlama2, kLlama3 };

std::string_view ChatTemplateFamilyName(ChatTemplateFamily family);

struct ChatTemplateInfo {
  ChatTemplateFamily family = ChatTemplateFamily::kChatml;
  // chatml: the system message inserted when the conversation does not start with one; empty
  // when the template has none.
  std::string default_system;
};

// The texts a template writes for `bos_token` / `eos_token`. Empty fields take the family's
// usual tokens: "<s>" / "</s>" for llama2, "<|begin_of_text|>" / "<|eot_id|>" for llama3.
struct ChatSpecialTokens {
  std::string bos;
  std::string eos;
};

// Recognises the template family. INVALID_ARGUMENT for an empty source, UNIMPLEMENTED for an
// unsupported template.
absl::StatusOr<ChatTemplateInfo> DetectChatTemplate(std::string_view template_source);

// Renders `messages` as the template would. With add_generation_prompt the prompt ends with the
// opening of an assistant turn (chatml, llama3). INVALID_ARGUMENT when the template rejects the
// conversation (llama2: roles that do not alternate).
absl::StatusOr<std::string> ApplyChatTemplate(std::string_view template_source,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt);
absl::StatusOr<std::string> ApplyChatTemplate(std::string_view template_source,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt,
                                              const ChatSpecialTokens& special);

// Uses the model's own template and its BOS/EOS texts. FAILED_PRECONDITION when the model has
// no chat template (a caller may then fall back to kChatmlTemplate).
absl::StatusOr<std::string> ApplyChatTemplate(const Tokenizer& tokenizer,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt);

// A plain chatml template without a default system message.
inline constexpr std::string_view kChatmlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

}  // namespace strata::text
