// The default model's tokenizer against llama.cpp (tests/fixtures/tokenizer_smollm2.json).
// Hand-built vocabularies are tested in tokenizer_vocab_test.cc.
#include "text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "tests/testing/paths.h"
#include "tests/text/tokenizer_testing.h"

namespace strata::text {
namespace {

using testkit::IsValidUtf8;
using testkit::Printable;

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// SmolLM2 has no token for the bytes 0x04 0x06 0x13 0x14 0x16 0x1d: llama.cpp drops them, and so
// do we (the fixture checks it), so text with them does not round-trip.
bool HasBytesWithoutToken(std::string_view text) {
  return text.find_first_of("\x04\x06\x13\x14\x16\x1d") != std::string_view::npos;
}

// The default model's tokenizer and the llama.cpp fixture, loaded once.
class SmolLm2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
    auto gguf = gguf::GgufFile::Open(testkit::DefaultModelPath());
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto tok = text::Tokenizer::FromGguf(**gguf);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    std::ifstream in(testkit::SourceDir() + "/tests/fixtures/tokenizer_smollm2.json");
    ASSERT_TRUE(in.good());
    fixture_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete fixture_;
    tokenizer_ = nullptr;
    fixture_ = nullptr;
  }
  static const text::Tokenizer& tok() { return *tokenizer_; }
  static const nlohmann::json& texts() { return (*fixture_)["texts"]; }

  static text::Tokenizer* tokenizer_;
  static nlohmann::json* fixture_;
};

text::Tokenizer* SmolLm2Test::tokenizer_ = nullptr;
nlohmann::json* SmolLm2Test::fixture_ = nullptr;

TEST_F(SmolLm2Test, Metadata) {
  EXPECT_EQ(tok().kind(), text::Tokenizer::Kind::kBpe);
  EXPECT_EQ(tok().pre(), "smollm");
  EXPECT_EQ(tok().vocab_size(), (*fixture_)["vocab_size"].get<int>());
  EXPECT_EQ(tok().bos_id(), (*fixture_)["bos_id"].get<int>());
  EXPECT_EQ(tok().eos_id(), (*fixture_)["eos_id"].get<int>());
  EXPECT_EQ(tok().add_bos(), (*fixture_)["add_bos"].get<bool>());
  EXPECT_EQ(tok().end_of_generation_ids(), (*fixture_)["eog_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(tok().eot_id(), 2);
  EXPECT_EQ(tok().token_text(2), "<|im_end|>");
  EXPECT_TRUE(tok().IsEndOfGeneration(2));
  EXPECT_FALSE(tok().IsEndOfGeneration(1));
  EXPECT_FALSE(tok().IsEndOfGeneration(-1));
  EXPECT_THAT(tok().chat_template(), ::testing::HasSubstr("<|im_start|>"));
  EXPECT_EQ(tok().FindToken("<|im_start|>"), 1);
  EXPECT_EQ(tok().FindToken("no such token"), std::nullopt);
}

// Checks Encode for each (add_special, parse_special) combination the fixture has and Decode
// of the add_special + parse_special ids against llama.cpp's results; returns the number of
// comparisons.
int ExpectMatchesLlamaCpp(const text::Tokenizer& tok,
                          const nlohmann::json& entries,
                          const std::string& label) {
  int checked = 0;
  for (const auto& t : entries) {
    const std::string text = FromHex(t["hex"].get<std::string>());
    for (bool add_special : {false, true}) {
      for (bool parse_special : {false, true}) {
        const std::string key = std::string("ids_add") + (add_special ? "1" : "0") + "_parse" +
                                (parse_special ? "1" : "0");
        if (!t.contains(key)) continue;
        const auto want = t[key].get<std::vector<int32_t>>();
        EXPECT_EQ(tok.Encode(text, add_special, parse_special), want)
            << label << " " << key << " text=\"" << Printable(text) << "\"";
        ++checked;
      }
    }
    const auto ids = t["ids_add1_parse1"].get<std::vector<int32_t>>();
    // Decoded bytes are stored only where they differ from the input.
    auto decoded = [&](const char* key) {
      return t.contains(key) ? FromHex(t[key].get<std::string>()) : text;
    };
    EXPECT_EQ(tok.Decode(ids, /*render_special=*/false), decoded("decoded_hex"))
        << label << " text=\"" << Printable(text) << "\"";
    EXPECT_EQ(tok.Decode(ids, /*render_special=*/true), decoded("decoded_special_hex"))
        << label << " text=\"" << Printable(text) << "\"";
    checked += 2;
  }
  return checked;
}

TEST_F(SmolLm2Test, EncodeAndDecodeMatchLlamaCpp) {
  ASSERT_GE(texts().size(), 40u);
  EXPECT_EQ(ExpectMatchesLlamaCpp(tok(), texts(), "smollm"), 6 * static_cast<int>(texts().size()));
}

// The same vocabulary under other pre-tokenizer names, against llama.cpp loading a GGUF that
// differs only in tokenizer.ggml.pre (and has no add_bos_token, so each name's default applies).
TEST_F(SmolLm2Test, OtherPreTokenizersMatchLlamaCpp) {
  auto gguf = gguf::GgufFile::Open(testkit::DefaultModelPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto base = text::ReadTokenizerVocab(**gguf);
  ASSERT_TRUE(base.ok()) << base.status();
  ASSERT_GE((*fixture_)["variants"].size(), 5u);
  for (const auto& variant : (*fixture_)["variants"]) {
    text::TokenizerVocab v = *base;
    v.pre = variant["pre"].get<std::string>();
    v.add_bos.reset();
    auto tok = text::Tokenizer::FromVocab(std::move(v));
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->add_bos(), variant["add_bos"].get<bool>()) << variant["pre"];
    EXPECT_GT(ExpectMatchesLlamaCpp(**tok, variant["texts"], variant["pre"]), 0);
  }
}

// A SentencePiece vocabulary made by the fixture script (scores, byte tokens, a control and a
// user-defined token), against llama.cpp's SPM tokenizer.
TEST_F(SmolLm2Test, SentencePieceMatchesLlamaCpp) {
  const auto& spm = (*fixture_)["spm"];
  text::TokenizerVocab v;
  v.model = "llama";
  v.tokens = spm["tokens"].get<std::vector<std::string>>();
  v.scores = spm["scores"].get<std::vector<float>>();
  for (int type : spm["token_types"].get<std::vector<int>>()) {
    v.token_types.push_back(static_cast<text::TokenType>(type));
  }
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  auto tok = text::Tokenizer::FromVocab(std::move(v));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->add_bos(), spm["add_bos"].get<bool>());
  EXPECT_GT(ExpectMatchesLlamaCpp(**tok, spm["texts"], "spm"), 0);
}

TEST_F(SmolLm2Test, DecodeInvertsEncode) {
  for (const auto& t : texts()) {
    if (!t.contains("text")) continue;  // invalid UTF-8 is read as U+FFFD, so it cannot round-trip
    const std::string text = t["text"].get<std::string>();
    if (HasBytesWithoutToken(text)) continue;
    EXPECT_EQ(tok().Decode(tok().Encode(text, false, false)), text) << Printable(text);
    EXPECT_EQ(tok().Decode(tok().Encode(text, true, true), /*render_special=*/true), text)
        << Printable(text);
  }
}

TEST_F(SmolLm2Test, InvalidUtf8IsReadAsReplacementCharacters) {
  // llama.cpp reads each bad byte as U+FFFD, so "\xff" encodes like "\uFFFD".
  EXPECT_EQ(tok().Encode("\xff", false, false), tok().Encode("\xEF\xBF\xBD", false, false));
  EXPECT_EQ(tok().Decode(tok().Encode("a\xff", false, false)), "a\xEF\xBF\xBD");
}

TEST_F(SmolLm2Test, TokenPieces) {
  EXPECT_EQ(tok().TokenPiece(216), " ");
  EXPECT_EQ(tok().TokenPiece(1), "<|im_start|>");
  EXPECT_EQ(tok().TokenPiece(1, /*render_special=*/false), "");
  EXPECT_EQ(tok().TokenPiece(-1), "");
  EXPECT_EQ(tok().TokenPiece(tok().vocab_size()), "");
  // Byte-level pieces can be a fragment of a UTF-8 character.
  const auto ids = tok().Encode("\xF0\x9F\x98\x80", false, false);  // U+1F600
  ASSERT_GT(ids.size(), 1u);
  std::string joined;
  for (int32_t id : ids) joined += tok().TokenPiece(id);
  EXPECT_EQ(joined, "\xF0\x9F\x98\x80");
  EXPECT_FALSE(IsValidUtf8(tok().TokenPiece(ids[0])));
}

TEST_F(SmolLm2Test, StreamDecoderEmitsWholeCharactersOnly) {
  for (const auto& t : texts()) {
    const auto ids = t["ids_add0_parse1"].get<std::vector<int32_t>>();
    for (bool special : {false, true}) {
      text::StreamDecoder stream(tok(), special);
      std::string all;
      for (int32_t id : ids) {
        std::string chunk = stream.Push(id);
        EXPECT_TRUE(IsValidUtf8(chunk)) << Printable(chunk);
        all += chunk;
      }
      std::string rest = stream.Flush();
      EXPECT_TRUE(IsValidUtf8(rest));
      all += rest;
      const std::string decoded = tok().Decode(ids, special);
      if (IsValidUtf8(decoded)) {
        EXPECT_EQ(all, decoded) << t["hex"];
      }
    }
  }
}

TEST_F(SmolLm2Test, StreamDecoderHoldsBackSplitCharacter) {
  const auto ids = tok().Encode("a\xF0\x9F\x98\x80", false, false);
  ASSERT_GE(ids.size(), 3u);
  text::StreamDecoder stream(tok());
  EXPECT_EQ(stream.Push(ids[0]), "a");
  std::string out;
  for (size_t i = 1; i + 1 < ids.size(); ++i) {
    EXPECT_EQ(stream.Push(ids[i]), "");
  }
  EXPECT_EQ(stream.Push(ids.back()), "\xF0\x9F\x98\x80");
  EXPECT_EQ(stream.Flush(), "");
  // An unfinished character at the end comes out as U+FFFD.
  EXPECT_EQ(stream.Push(ids[1]), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
}

TEST_F(SmolLm2Test, EncodeChatPromptParsesSpecialTokens) {
  const std::string prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(tok().EncodeChatPrompt(prompt), tok().Encode(prompt, true, true));
  EXPECT_EQ(tok().EncodeChatPrompt(prompt).front(), 1);
}

// Arbitrary bytes and ids: no crash, every id in range, streamed text always valid UTF-8.
TEST_F(SmolLm2Test, SurvivesRandomInput) {
  std::mt19937 rng(12345);
  const std::string alphabet =
      "ab \n\t'1<|>im_startend\xC3\xA9\xF0\x9F\x98\x80\xE4\xB8\xAD\xFF\x80";
  for (int iter = 0; iter < 500; ++iter) {
    std::string text;
    const int len = std::uniform_int_distribution<int>(0, 64)(rng);
    for (int i = 0; i < len; ++i) {
      text += iter % 2 ? static_cast<char>(rng() & 0xFF) : alphabet[rng() % alphabet.size()];
    }
    const auto ids = tok().Encode(text, iter % 3 == 0, iter % 5 == 0);
    text::StreamDecoder stream(tok(), iter % 7 == 0);
    for (int32_t id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, tok().vocab_size());
      EXPECT_TRUE(IsValidUtf8(stream.Push(id)));
    }
    EXPECT_TRUE(IsValidUtf8(stream.Flush()));
    if (IsValidUtf8(text) && !HasBytesWithoutToken(text)) {
      EXPECT_EQ(tok().Decode(tok().Encode(text, false, false)), text) << Printable(text);
    }
  }
  std::vector<int32_t> junk = {-5, 0, 1, 49151, 49152, 1 << 30};
  EXPECT_NO_FATAL_FAILURE(tok().Decode(junk, true));
  text::StreamDecoder stream(tok());
  for (int32_t id : junk) stream.Push(id);
  stream.Flush();
}

TEST_F(SmolLm2Test, LongInputIsFast) {
  std::string text;
  for (int i = 0; i < 2000; ++i)
    text += "The year 2024 saw ~12.5% growth; naïve café owners said \"wow\"!\n";
  const auto ids = tok().Encode(text, false, false);
  EXPECT_GT(ids.size(), 20000u);
  EXPECT_EQ(tok().Decode(ids), text);
  // One very long word exercises the merge queue.
  const std::string word(20000, 'a');
  EXPECT_EQ(tok().Decode(tok().Encode(word, false, false)), word);
}

}  // namespace
}  // namespace strata::text
