// Tokenizers built from hand-made vocabularies (byte-level BPE and SentencePiece) and from
// tokenizer metadata in an in-memory GGUF.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "gguf/writer.h"
#include "tests/text/tokenizer_testing.h"
#include "text/tokenizer.h"

namespace strata::text {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using testkit::IsValidUtf8;
using testkit::Printable;

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
  add(sp, -1, text::TokenType::kNormal);  // 259
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
