#include "text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "gguf/writer.h"
#include "tests/testing/paths.h"

namespace strata::text {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 < 0x80) {
      ++i;
      continue;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      need = 1;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      need = 2;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      need = 3;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    for (int k = 1; k <= need; ++k) {
      if (i + k >= s.size()) return false;
      const auto b = static_cast<uint8_t>(s[i + k]);
      if (b < lo || b > hi) return false;
      lo = 0x80, hi = 0xBF;
    }
    i += need + 1;
  }
  return true;
}

std::string Printable(const std::string& s) {
  std::ostringstream os;
  for (char c : s) {
    const auto b = static_cast<uint8_t>(c);
    if (b >= 0x20 && b < 0x7F) {
      os << c;
    } else {
      os << "\\x" << std::hex << int{b} << std::dec;
    }
  }
  return os.str();
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

// --- hand-built vocabularies ---------------------------------------------------------------

TEST(TokenizerVocabTest, RejectsBadVocabularies) {
  text::TokenizerVocab v;
  EXPECT_EQ(text::Tokenizer::FromVocab(v).status().code(), absl::StatusCode::kInvalidArgument);

  v.tokens = {"a", "b"};
  v.model = "bert";
  EXPECT_EQ(text::Tokenizer::FromVocab(v).status().code(), absl::StatusCode::kUnimplemented);

  v.model = "gpt2";
  v.pre = "no-such-pre";
  auto st = text::Tokenizer::FromVocab(v).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("no-such-pre"));

  v.pre = "gpt2";
  v.scores = {1.0f};
  EXPECT_EQ(text::Tokenizer::FromVocab(v).status().code(), absl::StatusCode::kInvalidArgument);
  v.scores.clear();
  v.token_types = {text::TokenType::kNormal};
  EXPECT_EQ(text::Tokenizer::FromVocab(v).status().code(), absl::StatusCode::kInvalidArgument);
  v.token_types.clear();
  EXPECT_TRUE(text::Tokenizer::FromVocab(v).ok());
}

// Tokenizer metadata in an in-memory GGUF: bad metadata gives a clear status, never a crash.
TEST(TokenizerGgufTest, ReadsAndRejectsMetadata) {
  auto parse = [](const gguf::GgufWriter& w) {
    static std::vector<std::vector<uint8_t>> keep;  // GgufFile::Parse does not copy
    keep.push_back(w.Serialize());
    auto gguf = gguf::GgufFile::Parse(keep.back().data(), keep.back().size(), "test.gguf");
    EXPECT_TRUE(gguf.ok()) << gguf.status();
    return text::Tokenizer::FromGguf(**gguf);
  };
  const std::vector<std::string> tokens = {"<s>", "</s>", "a", "b", "ab"};
  gguf::GgufWriter w;
  w.SetString("tokenizer.ggml.model", "llama");
  EXPECT_EQ(parse(w).status().code(), absl::StatusCode::kNotFound);  // no tokens
  w.SetArray("tokenizer.ggml.tokens", std::span<const std::string>(tokens));
  const std::vector<float> scores = {0, 0, -1, -1};
  w.SetArray("tokenizer.ggml.scores", std::span<const float>(scores));
  auto st = parse(w).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("test.gguf"));
  const std::vector<float> scores5 = {0, 0, -1, -1, -0.5f};
  w.SetArray("tokenizer.ggml.scores", std::span<const float>(scores5));
  w.SetArray("tokenizer.ggml.token_type", std::span<const std::string>(tokens));
  EXPECT_EQ(parse(w).status().code(), absl::StatusCode::kInvalidArgument);  // wrong type
  const std::vector<int32_t> types = {3, 3, 1, 1, 1};
  w.SetArray("tokenizer.ggml.token_type", std::span<const int32_t>(types));
  w.SetUint32("tokenizer.ggml.bos_token_id", 0);
  w.SetUint32("tokenizer.ggml.eos_token_id", 1);
  w.SetBool("tokenizer.ggml.add_space_prefix", false);
  w.SetString("tokenizer.chat_template", "<|im_start|>");
  auto tok = parse(w);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), text::Tokenizer::Kind::kSpm);
  EXPECT_EQ((*tok)->bos_id(), 0);
  EXPECT_EQ((*tok)->eos_id(), 1);
  EXPECT_EQ((*tok)->unk_id(), 0);  // the SentencePiece default, as in llama.cpp
  EXPECT_EQ((*tok)->chat_template(), "<|im_start|>");
  EXPECT_THAT((*tok)->Encode("ab", true, false), ElementsAre(0, 4));

  w.SetString("tokenizer.ggml.model", "gpt2");
  EXPECT_EQ(parse(w).status().code(), absl::StatusCode::kNotFound);  // no merges
  w.SetString("tokenizer.ggml.model", "bert");
  EXPECT_EQ(parse(w).status().code(), absl::StatusCode::kUnimplemented);
}

// A byte-level vocabulary: the 256 byte characters plus the merges given.
text::TokenizerVocab ByteLevelVocab(std::string pre, const std::vector<std::string>& merges) {
  // GPT-2's bytes_to_unicode.
  std::vector<std::string> byte_chars(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    byte_chars[b] = s;
  }
  text::TokenizerVocab v;
  v.model = "gpt2";
  v.pre = std::move(pre);
  v.tokens = byte_chars;
  for (const std::string& m : merges) {
    v.merges.push_back(m);
    const size_t sp = m.find(' ');
    v.tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
  }
  return v;
}

std::vector<std::string> Texts(const text::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.emplace_back(tok.token_text(id));
  return out;
}

TEST(TokenizerVocabTest, PreTokenizerSplitsDigitsPerModel) {
  const std::vector<std::string> merges = {"1 2", "12 3", "123 4"};
  auto texts_for = [&](const std::string& pre) {
    auto tok = text::Tokenizer::FromVocab(ByteLevelVocab(pre, merges));
    EXPECT_TRUE(tok.ok()) << tok.status();
    return Texts(**tok, (*tok)->Encode("1234", false, false));
  };
  EXPECT_THAT(texts_for("gpt2"), ElementsAre("1234"));
  EXPECT_THAT(texts_for("llama3"), ElementsAre("123", "4"));
  EXPECT_THAT(texts_for("qwen2"), ElementsAre("1", "2", "3", "4"));
  EXPECT_THAT(texts_for("smollm"), ElementsAre("1", "2", "3", "4"));
  // default: \p{N}+ then [0-9][0-9][0-9]
  EXPECT_THAT(texts_for("default"), ElementsAre("123", "4"));
}

TEST(TokenizerVocabTest, KnowsUnicode15LettersAndDigits) {
  // U+11F50 KAWI DIGIT ZERO (Unicode 15.0) is a number: smollm isolates it from the space before.
  auto smollm = text::Tokenizer::FromVocab(ByteLevelVocab("smollm", {"Ġ ð"}));
  ASSERT_TRUE(smollm.ok());
  EXPECT_EQ(Texts(**smollm, (*smollm)->Encode(" \xF0\x91\xBD\x90", false, false)).front(), "Ġ");
  // U+31350 (CJK extension H, Unicode 15.0) is a letter: it stays in the word of the "x" before.
  auto gpt2 = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {"x ð"}));
  ASSERT_TRUE(gpt2.ok());
  EXPECT_EQ(Texts(**gpt2, (*gpt2)->Encode("x\xF0\xB1\x8D\x90", false, false)).front(), "xð");
  // Letter-numbers (U+2160 ROMAN NUMERAL ONE) are numbers, not letters.
  EXPECT_EQ(Texts(**gpt2, (*gpt2)->Encode("x\xE2\x85\xA0", false, false)).front(), "x");
}

TEST(TokenizerVocabTest, MergesFollowRankNotLength) {
  // "a b" outranks "b c", so "abc" becomes "ab" + "c" even though "bc" exists too.
  auto tok = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {"a b", "b c", "ab c"}));
  ASSERT_TRUE(tok.ok());
  EXPECT_THAT(Texts(**tok, (*tok)->Encode("abc", false, false)), ElementsAre("abc"));
  auto tok2 = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {"b c", "a b", "a bc"}));
  ASSERT_TRUE(tok2.ok());
  EXPECT_THAT(Texts(**tok2, (*tok2)->Encode("abc", false, false)), ElementsAre("abc"));
  auto tok3 = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {"b c", "a b"}));
  ASSERT_TRUE(tok3.ok());
  EXPECT_THAT(Texts(**tok3, (*tok3)->Encode("abc", false, false)), ElementsAre("a", "bc"));
}

TEST(TokenizerVocabTest, WhitespaceRunLeavesLastSpaceToNextWord) {
  // \s+(?!\S): in "  x" the word " x" keeps one space ("Ġ" is the space byte).
  auto tok = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {"Ġ x", "Ġ Ġ"}));
  ASSERT_TRUE(tok.ok());
  EXPECT_THAT(Texts(**tok, (*tok)->Encode("  x", false, false)), ElementsAre("Ġ", "Ġx"));
  EXPECT_THAT(Texts(**tok, (*tok)->Encode("x  ", false, false)), ElementsAre("x", "ĠĠ"));
  // Llama 3 keeps newlines with the preceding spaces: \s*[\r\n]+
  auto tok3 = text::Tokenizer::FromVocab(ByteLevelVocab("llama3", {"Ġ Ċ", "Ġ x"}));
  ASSERT_TRUE(tok3.ok());
  EXPECT_THAT(Texts(**tok3, (*tok3)->Encode(" \n x", false, false)), ElementsAre("ĠĊ", "Ġx"));
}

TEST(TokenizerVocabTest, Llama3AddsBosAndIgnoresMergesForWholeWords) {
  text::TokenizerVocab v = ByteLevelVocab("llama3", {});
  v.tokens.push_back("hello");  // a word in the vocabulary without merges that build it
  v.tokens.push_back("<|begin_of_text|>");
  v.token_types.assign(v.tokens.size(), text::TokenType::kNormal);
  v.token_types.back() = text::TokenType::kControl;
  v.bos_id = static_cast<int32_t>(v.tokens.size() - 1);
  auto tok = text::Tokenizer::FromVocab(v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_TRUE((*tok)->add_bos());
  EXPECT_THAT(Texts(**tok, (*tok)->Encode("hello", true, false)),
              ElementsAre("<|begin_of_text|>", "hello"));
  // The chat prompt already has the BOS text: no second BOS.
  EXPECT_THAT(Texts(**tok, (*tok)->EncodeChatPrompt("<|begin_of_text|>hello")),
              ElementsAre("<|begin_of_text|>", "hello"));
}

TEST(TokenizerVocabTest, SpecialTokensParsedOnlyWhenAsked) {
  text::TokenizerVocab v = ByteLevelVocab("gpt2", {});
  v.tokens.push_back("<ctl>");
  v.tokens.push_back("<usr>");
  v.token_types.assign(v.tokens.size(), text::TokenType::kNormal);
  v.token_types[256] = text::TokenType::kControl;
  v.token_types[257] = text::TokenType::kUserDefined;
  auto tok = text::Tokenizer::FromVocab(v);
  ASSERT_TRUE(tok.ok());
  // User-defined tokens are always recognised; control tokens only with parse_special.
  EXPECT_THAT((*tok)->Encode("<usr>", false, false), ElementsAre(257));
  EXPECT_THAT((*tok)->Encode("<ctl>", false, true), ElementsAre(256));
  EXPECT_EQ((*tok)->Encode("<ctl>", false, false).size(), 5u);
  EXPECT_EQ((*tok)->Decode({256, 257}), "<usr>");
  EXPECT_EQ((*tok)->Decode({256, 257}, /*render_special=*/true), "<ctl><usr>");
}

TEST(TokenizerVocabTest, CleanUpSpacesLikeLlamaCpp) {
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces("Hello , world !"), "Hello, world!");
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces("rock ' n"), "rock'n");
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces("it 's I 'm we 've they 're"), "it's I'm we've they're");
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces("don 't I 'll"), "don 't I 'll");
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces(""), "");
  EXPECT_EQ(text::Tokenizer::CleanUpSpaces(" ."), ".");
}

TEST(TokenizerVocabTest, StreamDecoderMatchesDecodeWithCleanUp) {
  // "gpt2" cleans spaces: a stream must give the same text as Decode.
  auto tok = text::Tokenizer::FromVocab(ByteLevelVocab("gpt2", {}));
  ASSERT_TRUE(tok.ok());
  const std::string text = "Hello , world ! it 's fine . rock ' n ' roll \xC3\xA9 ?";
  const auto ids = (*tok)->Encode(text, false, false);
  text::StreamDecoder stream(**tok);
  std::string all;
  for (int32_t id : ids) {
    std::string chunk = stream.Push(id);
    EXPECT_TRUE(IsValidUtf8(chunk));
    all += chunk;
  }
  all += stream.Flush();
  EXPECT_EQ(all, (*tok)->Decode(ids));
  EXPECT_EQ(all, "Hello, world! it's fine. rock'n'roll \xC3\xA9?");

  // Random runs of the characters the clean-up looks at, one byte per token.
  std::mt19937 rng(7);
  const std::string alphabet = "  ''.,?!smrevtdlx\xC3\xA9";
  for (int iter = 0; iter < 300; ++iter) {
    std::string random;
    for (int i = std::uniform_int_distribution<int>(1, 40)(rng); i > 0; --i) {
      random += alphabet[rng() % alphabet.size()];
    }
    const auto random_ids = (*tok)->Encode(random, false, false);
    std::string streamed;
    for (int32_t id : random_ids) streamed += stream.Push(id);
    streamed += stream.Flush();
    const std::string decoded = (*tok)->Decode(random_ids);
    if (IsValidUtf8(decoded)) {
      EXPECT_EQ(streamed, decoded) << Printable(random);
    }
  }
}

// A SentencePiece vocabulary: <unk>, <s>, </s>, byte tokens, then scored pieces.
text::TokenizerVocab SpmVocab() {
  text::TokenizerVocab v;
  v.model = "llama";
  auto add = [&](std::string text, float score, text::TokenType type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0, text::TokenType::kUnknown);
  add("<s>", 0, text::TokenType::kControl);
  add("</s>", 0, text::TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    add(buf, 0, text::TokenType::kByte);
  }
  const std::string sp = "\xE2\x96\x81";  // U+2581
  add(sp, -1, text::TokenType::kNormal);        // 259
  for (const char* c : {"h", "e", "l", "o", "w", "r", "d"}) add(c, -2, text::TokenType::kNormal);
  add(sp + "h", -2, text::TokenType::kNormal);   // 267
  add("he", -4, text::TokenType::kNormal);       // 268
  add("ll", -1, text::TokenType::kNormal);       // 269
  add("llo", -3, text::TokenType::kNormal);      // 270
  add(sp + "he", -5, text::TokenType::kNormal);  // 271
  add(sp + "w", -2, text::TokenType::kNormal);   // 272
  return v;
}

TEST(SpmTokenizerTest, MergesByScoreAndFallsBackToBytes) {
  auto tok = text::Tokenizer::FromVocab(SpmVocab());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const text::Tokenizer& t = **tok;
  EXPECT_EQ(t.kind(), text::Tokenizer::Kind::kSpm);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_TRUE(t.add_bos());
  // "▁hello": "ll" (-1) first, then "▁h" (-2), "llo" (-3), and "▁he" (-5); "he" (-4) went stale
  // when "▁h" took its "h".
  EXPECT_THAT(Texts(t, t.Encode("hello", false, false)), ElementsAre("▁he", "llo"));
  EXPECT_THAT(t.Encode("hello", true, false), ElementsAre(1, 271, 270));
  // "é" is not in the vocabulary: its two bytes.
  EXPECT_THAT(Texts(t, t.Encode("hé", false, false)), ElementsAre("▁h", "<0xC3>", "<0xA9>"));
  // A space is prefixed to text after a special token; "<s>" is only parsed when asked.
  EXPECT_THAT(t.Encode("<s>hello", false, true), ElementsAre(1, 271, 270));
  EXPECT_EQ(t.Encode("<s>hello", false, false).size(), 6u);  // ▁ < s > he llo
  EXPECT_THAT(t.Encode("", true, false), ElementsAre(1));
  EXPECT_THAT(t.Encode("", false, false), IsEmpty());
}

TEST(SpmTokenizerTest, DecodesBytesAndLeadingSpace) {
  auto tok = text::Tokenizer::FromVocab(SpmVocab());
  ASSERT_TRUE(tok.ok());
  const text::Tokenizer& t = **tok;
  EXPECT_EQ(t.Decode(t.Encode("hello world", false, false)), "hello world");
  EXPECT_EQ(t.Decode(t.Encode("hé", false, false)), "h\xC3\xA9");
  // As llama_detokenize: the leading space is only removed from the very first token.
  EXPECT_EQ(t.Decode(t.Encode("hello", true, false)), " hello");
  EXPECT_EQ(t.Decode(t.Encode("hello", true, false), true), "<s> hello");
  EXPECT_EQ(t.TokenPiece(3 + 0xC3), "\xC3");

  text::StreamDecoder stream(t);
  EXPECT_EQ(stream.Push(271), "he");
  EXPECT_EQ(stream.Push(3 + 0xC3), "");
  EXPECT_EQ(stream.Push(3 + 0xA9), "\xC3\xA9");
  EXPECT_EQ(stream.Flush(), "");
}

TEST(SpmTokenizerTest, UnknownCharacterWithoutByteTokensIsUnk) {
  text::TokenizerVocab v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a"};
  v.token_types = {text::TokenType::kUnknown,
                   text::TokenType::kControl,
                   text::TokenType::kControl,
                   text::TokenType::kNormal,
                   text::TokenType::kNormal};
  auto tok = text::Tokenizer::FromVocab(v);
  ASSERT_TRUE(tok.ok());
  EXPECT_THAT((*tok)->Encode("a\xC3\xA9", false, false), ElementsAre(3, 4, 0, 0));
}

}  // namespace
}  // namespace strata::text
