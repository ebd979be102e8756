#include "text/byte_vocab.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "text/tokenizer.h"

namespace strata::text {

void SetByteLevelVocab(gguf::GgufWriter& w, int vocab) {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(Gpt2ByteSymbol(static_cast<uint8_t>(b)));
    types.push_back(1);  // normal
  }
  for (const char* special : {"<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(special);
    types.push_back(3);  // control
  }
  while (static_cast<int>(tokens.size()) < vocab) {
    tokens.push_back(absl::StrCat("<|unused_", tokens.size(), "|>"));
    types.push_back(5);  // unused
  }
  const std::vector<std::string> merges;
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "smollm");
  w.SetArray("tokenizer.ggml.tokens", std::span<const std::string>(tokens));
  w.SetArray("tokenizer.ggml.token_type", std::span<const int32_t>(types));
  w.SetArray("tokenizer.ggml.merges", std::span<const std::string>(merges));
  w.SetUint32("tokenizer.ggml.bos_token_id", 256);
  w.SetUint32("tokenizer.ggml.eos_token_id", 257);
  w.SetBool("tokenizer.ggml.add_bos_token", false);
  w.SetString("tokenizer.chat_template",
              "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
}

}  // namespace strata::text
