#include "text/chat_template.h"

#include <cstdint>

#include "absl/status/status.h"
#include "common/strings.h"
#include "text/tokenizer.h"

namespace strata::text {
namespace {

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Python's str.isspace for one code point (what Jinja's trim and str.strip() remove).
bool IsPythonSpace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// Decodes the code point starting at s[i] (valid UTF-8 assumed; a bad byte reads as itself).
uint32_t CodepointAt(std::string_view s, size_t i, size_t* len) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  size_t n = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  if (b0 >= 0x80 && b0 < 0xC0) n = 1;
  if (i + n > s.size()) n = 1;
  *len = n;
  if (n == 1) return b0;
  uint32_t cp = b0 & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  return cp;
}

// Python's str.strip().
std::string Strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t len;
    if (!IsPythonSpace(CodepointAt(s, begin, &len))) break;
    begin += len;
  }
  size_t end = begin;  // one past the last non-space code point
  for (size_t i = begin; i < s.size();) {
    size_t len;
    const bool space = IsPythonSpace(CodepointAt(s, i, &len));
    i += len;
    if (!space) end = i;
  }
  return std::string(s.substr(begin, end - begin));
}

// The string literals inside the Jinja statements and expressions ({% %}, {{ }}) of a source,
// unescaped ('\n', '\t', '\\', '\'', '\"'). Plain template text and {# comments #} are skipped.
std::vector<std::string> StringLiterals(std::string_view src) {
  std::vector<std::string> out;
  bool in_code = false;
  for (size_t i = 0; i < src.size(); ++i) {
    if (!in_code) {
      if (src.compare(i, 2, "{#") == 0) {
        size_t close = src.find("#}", i + 2);
        if (close == std::string_view::npos) break;
        i = close + 1;
      } else if (src.compare(i, 2, "{{") == 0 || src.compare(i, 2, "{%") == 0) {
        in_code = true;
        ++i;
      }
      continue;
    }
    if (src.compare(i, 2, "}}") == 0 || src.compare(i, 2, "%}") == 0) {
      in_code = false;
      ++i;
      continue;
    }
    const char quote = src[i];
    if (quote != '\'' && quote != '"') continue;
    std::string lit;
    size_t j = i + 1;
    for (; j < src.size() && src[j] != quote; ++j) {
      if (src[j] == '\\' && j + 1 < src.size()) {
        const char e = src[++j];
        switch (e) {
          case 'n':
            lit += '\n';
            break;
          case 't':
            lit += '\t';
            break;
          case 'r':
            lit += '\r';
            break;
          case '\\':
          case '\'':
          case '"':
            lit += e;
            break;
          default:
            lit += '\\';
            lit += e;
            break;
        }
      } else {
        lit += src[j];
      }
    }
    if (j >= src.size()) break;  // unterminated
    out.push_back(std::move(lit));
    i = j;
  }
  return out;
}

std::string RenderChatml(const ChatTemplateInfo& info,
                         const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && !info.default_system.empty() && messages[0].role != "system") {
      out = StrCat("<|im_start|>system\n", info.default_system, "<|im_end|>\n");
    }
    out += StrCat("<|im_start|>", messages[i].role, "\n", messages[i].content, "<|im_end|>\n");
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

absl::StatusOr<std::string> RenderLlama2(const std::vector<ChatMessage>& messages,
                                         const ChatSpecialTokens& special) {
  size_t first = 0;
  const std::string* system = nullptr;
  if (!messages.empty() && messages[0].role == "system") {
    system = &messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t index = i - first;
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (index % 2 == 0)) {
      return absl::InvalidArgumentError(
          "llama2 chat template: conversation roles must alternate "
          "user/assistant/user/assistant/...");
    }
    std::string content = m.content;
    if (index == 0 && system != nullptr) {
      content = StrCat("<<SYS>>\n", *system, "\n<</SYS>>\n\n", m.content);
    }
    if (m.role == "user") {
      out += StrCat(special.bos, "[INST] ", Strip(content), " [/INST]");
    } else if (m.role == "assistant") {
      out += StrCat(" ", Strip(content), " ", special.eos);
    }
  }
  return out;
}

std::string RenderLlama3(const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt,
                         const ChatSpecialTokens& special) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += special.bos;
    out += StrCat("<|start_header_id|>",
                  messages[i].role,
                  "<|end_header_id|>\n\n",
                  Strip(messages[i].content),
                  "<|eot_id|>");
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

std::string_view ChatTemplateFamilyName(ChatTemplateFamily family) {
  switch (family) {
    case ChatTemplateFamily::kChatml:
      return "chatml";
    case ChatTemplateFamily::kLlama2:
      return "llama2";
    case ChatTemplateFamily::kLlama3:
      return "llama3";
  }
  return "unknown";
}

absl::StatusOr<ChatTemplateInfo> DetectChatTemplate(std::string_view src) {
  if (src.empty()) return absl::InvalidArgumentError("chat template: the template is empty");
  ChatTemplateInfo info;
  if (Contains(src, "<|im_start|>")) {
    if (Contains(src, "<|im_sep|>")) {
      return absl::UnimplementedError("chat template: Phi-4 style (<|im_sep|>) is not supported");
    }
    if (Contains(src, "<end_of_utterance>")) {
      return absl::UnimplementedError(
          "chat template: SmolVLM style (<end_of_utterance>) is not supported");
    }
    info.family = ChatTemplateFamily::kChatml;
    constexpr std::string_view kOpen = "<|im_start|>system\n";
    constexpr std::string_view kClose = "<|im_end|>\n";
    for (const std::string& lit : StringLiterals(src)) {
      if (lit.size() >= kOpen.size() + kClose.size() && lit.compare(0, kOpen.size(), kOpen) == 0 &&
          lit.compare(lit.size() - kClose.size(), kClose.size(), kClose) == 0) {
        info.default_system = lit.substr(kOpen.size(), lit.size() - kOpen.size() - kClose.size());
        break;
      }
    }
    return info;
  }
  if (Contains(src, "[INST]")) {
    if (!Contains(src, "<<SYS>>")) {
      return absl::UnimplementedError(
          "chat template: [INST] template without <<SYS>> (Mistral style) is not supported");
    }
    info.family = ChatTemplateFamily::kLlama2;
    return info;
  }
  if (Contains(src, "<|start_header_id|>") && Contains(src, "<|end_header_id|>")) {
    info.family = ChatTemplateFamily::kLlama3;
    return info;
  }
  return absl::UnimplementedError(
      "chat template: unrecognised template (supported: chatml, llama2, llama3)");
}

absl::StatusOr<std::string> ApplyChatTemplate(std::string_view template_source,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt) {
  return ApplyChatTemplate(template_source, messages, add_generation_prompt, ChatSpecialTokens{});
}

absl::StatusOr<std::string> ApplyChatTemplate(std::string_view template_source,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt,
                                              const ChatSpecialTokens& special) {
  auto info = DetectChatTemplate(template_source);
  if (!info.ok()) return info.status();
  ChatSpecialTokens tokens = special;
  switch (info->family) {
    case ChatTemplateFamily::kChatml:
      return RenderChatml(*info, messages, add_generation_prompt);
    case ChatTemplateFamily::kLlama2:
      if (tokens.bos.empty()) tokens.bos = "<s>";
      if (tokens.eos.empty()) tokens.eos = "</s>";
      return RenderLlama2(messages, tokens);
    case ChatTemplateFamily::kLlama3:
      if (tokens.bos.empty()) tokens.bos = "<|begin_of_text|>";
      if (tokens.eos.empty()) tokens.eos = "<|eot_id|>";
      return RenderLlama3(messages, add_generation_prompt, tokens);
  }
  return absl::InternalError("chat template: unknown family");
}

absl::StatusOr<std::string> ApplyChatTemplate(const Tokenizer& tokenizer,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt) {
  if (tokenizer.chat_template().empty()) {
    return absl::FailedPreconditionError("chat template: the model has no chat template");
  }
  ChatSpecialTokens special;
  special.bos = std::string(tokenizer.token_text(tokenizer.bos_id()));
  special.eos = std::string(tokenizer.token_text(tokenizer.eos_id()));
  return ApplyChatTemplate(tokenizer.chat_template(), messages, add_generation_prompt, special);
}

}  // namespace strata::text
