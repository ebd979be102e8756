// The byte-level vocabulary the project writes into its own test and benchmark models.
#include "text/byte_vocab.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "gguf/writer.h"
#include "gtest/gtest.h"
#include "text/tokenizer.h"

namespace strata::text {
namespace {

TEST(ByteLevelVocabTest, TokenizesAnyTextByBytesAndFillsToTheSize) {
  gguf::GgufWriter w;
  SetByteLevelVocab(w, 300);
  const std::vector<uint8_t> bytes = w.Serialize();
  auto file = gguf::GgufFile::Parse(bytes.data(), bytes.size(), "vocab.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  auto tok = Tokenizer::FromGguf(**file);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 300);
  EXPECT_EQ((*tok)->bos_id(), 256);
  const std::string text = "héllo, wörld\n";
  const std::vector<int32_t> ids = (*tok)->Encode(text, false, false);
  EXPECT_EQ(ids.size(), text.size());  // no merges: one token per byte
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], static_cast<uint8_t>(text[i]));
  EXPECT_EQ((*tok)->Decode(ids), text);
  EXPECT_EQ((*tok)->Encode("<|im_end|>", false, true), (std::vector<int32_t>{257}));
}

}  // namespace
}  // namespace strata::text
