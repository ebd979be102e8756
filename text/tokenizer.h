// Text <-> token ids, bit-for-bit compatible with llama.cpp's llama_tokenize / llama_detokenize.
//
// Two tokenizer families, chosen by `tokenizer.ggml.model`:
//   "gpt2"  byte-level BPE: the text is split by a pre-tokenizer chosen by `tokenizer.ggml.pre`
//           (see Tokenizer::FromVocab for the supported names), every byte of a piece is mapped to
//           GPT-2's printable byte alphabet, then merges are applied by rank.
//   "llama" SentencePiece-style: spaces become U+2581, a space is prefixed to each text run that
//           starts the input or follows a special token (add_space_prefix), pieces are merged by
//           score and characters outside the vocabulary fall back to <0xXX> byte tokens.
//
// Special tokens (control, user-defined, unknown) written in the text are recognised first,
// longest first: control and unknown tokens only when `parse_special` is true, user-defined tokens
// always (llama.cpp and Hugging Face tokenizers do the same).
//
// Known differences from llama.cpp, none of which affects the default model:
//   * Unicode categories come from PCRE2's tables, extended with the letters and numbers of
//     Unicode 15.0/15.1 that llama.cpp's tables have; the punctuation and symbol classes used
//     by the "default" pre-tokenizer are PCRE2's alone (Unicode 14 with PCRE2 10.42).
//   * Model-name specific token attributes (Phi-3's rstrip, jina's <mask> lstrip) are not applied.
//   * eot_id() without `tokenizer.ggml.eot_token_id` is the first of a fixed preference list
//     (<|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>, <|endoftext|>, ...); llama.cpp picks
//     whichever its hash map yields first. IsEndOfGeneration() matches llama.cpp's EOG set.
//   * Equal-length special tokens are tried in id order (llama.cpp: unspecified order).
//   * Where llama.cpp throws (a 5-byte-style UTF-8 lead F5..F7 decoding past U+10FFFF; an SPM
//     character with neither a <0xXX> nor a single-byte token) we use U+FFFD / the unknown token.
//
// A Tokenizer is immutable after construction and safe to use from several threads.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace strata::gguf {
class GgufFile;
}  // namespace strata::gguf

namespace strata::text {

// GGUF token types (`tokenizer.ggml.token_type`), same numbering as llama.cpp / gguf-py.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Everything a tokenizer is built from; FromGguf fills it from the `tokenizer.*` metadata, tests
// build one by hand. Unset optionals take the model family's default, as in llama.cpp.
struct TokenizerVocab {
  std::string model = "gpt2";          // "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;                     // BPE pre-tokenizer name; empty means "default"
  std::vector<std::string> tokens;     // id -> text (BPE: in GPT-2's byte alphabet)
  std::vector<float> scores;           // SPM merge priority (higher first); empty = all 0
  std::vector<TokenType> token_types;  // empty = all normal
  std::vector<std::string> merges;     // BPE merges "left right"; rank = index (lower first)
  std::optional<int32_t> bos_id, eos_id, eot_id, eom_id, unk_id, sep_id, pad_id;
  std::optional<int32_t> fim_pad_id, fim_rep_id, fim_sep_id;  // also end generation
  std::optional<bool> add_bos;           // default: true for SPM and llama3-style BPE
  std::optional<bool> add_eos;           // default: false
  std::optional<bool> add_space_prefix;  // default: true for SPM, false for BPE
  std::string chat_template;             // Jinja source (`tokenizer.chat_template`), may be empty
};

// Reads `tokenizer.ggml.*` and `tokenizer.chat_template` without building a tokenizer (to inspect
// or adjust a vocabulary before Tokenizer::FromVocab). INVALID_ARGUMENT / NOT_FOUND as FromGguf.
absl::StatusOr<TokenizerVocab> ReadTokenizerVocab(const gguf::GgufFile& gguf);

class Tokenizer {
 public:
  enum class Kind { kBpe, kSpm };

  // Reads `tokenizer.ggml.*` and `tokenizer.chat_template`. UNIMPLEMENTED for a tokenizer model
  // or pre-tokenizer this code does not support, NOT_FOUND for a missing required key (model,
  // tokens, BPE merges), INVALID_ARGUMENT for inconsistent metadata (fewer scores or token types
  // than tokens, a key of the wrong type). Messages name the file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& gguf);

  // Builds from a plain vocabulary. Supported BPE pre-tokenizers (tokenizer.ggml.pre):
  //   "default" / ""                                    llama.cpp's default regex chain
  //   "gpt2", "gpt-2", "phi-2", "mpt", "olmo"           GPT-2 pattern
  //   "smollm", "starcoder", "refact", "command-r",     each digit alone, then GPT-2 pattern
  //   "codeshell", "exaone", "minerva-7b"
  //   "llama3", "llama-v3", "llama-bpe", "falcon3",     Llama 3 pattern (digits in threes);
  //   "falcon-h1", "pixtral", "dbrx", "smaug-bpe"       all but dbrx/smaug-bpe add BOS and
  //                                                     take a word in the vocabulary whole
  //   "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez" Qwen2 pattern (single digits)
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocab(TokenizerVocab vocab);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Same ids as llama.cpp's llama_tokenize(text, add_special, parse_special). `add_special` adds
  // BOS (and EOS) only when the model asks for them (add_bos / add_eos). Invalid UTF-8 is read
  // as U+FFFD per bad byte, as llama.cpp does; no input makes this fail.
  std::vector<int32_t> Encode(std::string_view text, bool add_special, bool parse_special) const;

  // Tokenizes a prompt produced by ApplyChatTemplate: special tokens are parsed, and BOS is added
  // only if the model wants it and the text does not already start with the BOS token's text.
  std::vector<int32_t> EncodeChatPrompt(std::string_view prompt) const;

  // The bytes of one token. Control and unknown tokens give their text when `render_special`,
  // nothing otherwise. Byte-level BPE pieces are mapped back from GPT-2's alphabet to raw bytes,
  // so a piece may be an incomplete UTF-8 sequence. Out-of-range ids give "".
  std::string TokenPiece(int32_t id, bool render_special = true) const;

  // Same bytes as llama.cpp's llama_detokenize(ids, remove_special=false,
  // unparse_special=render_special): pieces concatenated, the SPM leading space removed, and the
  // vocabulary's space clean-up (" ," -> ",", ...) applied where llama.cpp applies it.
  std::string Decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  Kind kind() const { return kind_; }
  const std::string& pre() const { return pre_; }
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // Special ids; -1 when the model has none.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t eot_id() const { return eot_id_; }  // end of turn, e.g. <|im_end|> for chatml
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // True for every token that ends a generation (EOS, EOT, <|im_end|>, <|endoftext|>, ...),
  // the same set as llama.cpp's llama_vocab_is_eog.
  bool IsEndOfGeneration(int32_t id) const;
  const std::vector<int32_t>& end_of_generation_ids() const { return eog_ids_; }
  const std::string& chat_template() const { return chat_template_; }

  // The vocabulary entry (BPE: in GPT-2's alphabet); "" when out of range.
  std::string_view token_text(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // The id whose vocabulary text is exactly `text`.
  std::optional<int32_t> FindToken(std::string_view text) const;

  // True when Decode applies llama.cpp's space clean-up for this vocabulary.
  bool clean_spaces() const { return clean_spaces_; }
  bool add_space_prefix() const { return add_space_prefix_; }

  // llama.cpp's detokenizer clean-up passes (" ?" -> "?", " ' " -> "'", " 's" -> "'s", ...).
  static std::string CleanUpSpaces(std::string text);

 private:
  struct PreTokenizer;  // pre_tokenizer.cc

  Tokenizer();
  absl::Status Init(TokenizerVocab vocab);
  absl::Status InitBpe(std::vector<std::string> merges);  // tokenizer_bpe.cc
  // Builds pre_tokenizer_ for pre_ and applies its flags (clean_spaces_, ignore_merges_, add_bos_);
  // UNIMPLEMENTED for an unknown name (pre_tokenizer.cc).
  absl::Status InitPreTokenizer();
  // Splits a run of plain text into words, each in GPT-2's byte alphabet (pre_tokenizer.cc).
  std::vector<std::string> PreTokenize(std::string_view text) const;
  void AssignSpecialIds(const TokenizerVocab& vocab, int32_t bos, int32_t eos, int32_t unk);
  void BuildEndOfGenerationSet(std::initializer_list<int32_t> ids);
  void DetectSpecialTokens();
  // Appends the ids of one run of plain text (no special tokens in it).
  void EncodeBpe(std::string_view text, std::vector<int32_t>& out) const;  // tokenizer_bpe.cc
  void EncodeSpm(std::string_view text, std::vector<int32_t>& out) const;  // tokenizer_spm.cc
  // Maps a byte-level BPE token text from GPT-2's alphabet back to bytes (tokenizer_bpe.cc).
  static std::string BpeTextToBytes(std::string_view text);
  // SPM byte fallback: <0xXX>, else the single-byte token, else unk; -1 if none.
  int32_t SpmByteToken(uint8_t byte) const;
  int32_t Lookup(std::string_view text) const;  // -1 when absent
  bool IsControlOrUnknown(int32_t id) const;

  Kind kind_ = Kind::kBpe;
  std::string pre_;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<uint32_t> attrs_;  // kAttr* bits, see tokenizer_internal.h
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  absl::flat_hash_map<std::string, int32_t> bpe_ranks_;  // "left right" -> rank
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::vector<int32_t> special_tokens_;  // longest text first
  std::vector<int32_t> eog_ids_;         // sorted
  std::string chat_template_;
  int32_t bos_id_ = -1, eos_id_ = -1, eot_id_ = -1, eom_id_ = -1, unk_id_ = -1, sep_id_ = -1,
          pad_id_ = -1;
  bool add_bos_ = false;
  bool add_eos_ = false;
  bool add_space_prefix_ = false;
  bool clean_spaces_ = false;
  bool ignore_merges_ = false;
};

// Turns a stream of token ids into text that never splits a UTF-8 character: bytes of an
// incomplete sequence are held back until the token that completes it arrives. Bytes that can
// never form valid UTF-8 come out as U+FFFD. Concatenating every Push and the final Flush gives
// Tokenizer::Decode of all ids whenever that is valid UTF-8 (otherwise the same with bad bytes
// replaced). For vocabularies with space clean-up a few trailing bytes are held back until the
// next token shows whether the clean-up changes them (and each Push re-runs the clean-up over the
// text so far, which is linear in its length).
class StreamDecoder {
 public:
  // `tokenizer` must outlive the decoder. `render_special` as in Tokenizer::Decode.
  explicit StreamDecoder(const Tokenizer& tokenizer, bool render_special = false);

  // Returns the text that became final with this token (possibly "").
  std::string Push(int32_t id);
  // Returns whatever is held back and resets the decoder for a new stream.
  std::string Flush();

 private:
  std::string TakeValid(std::string_view bytes, bool final, size_t* consumed);

  const Tokenizer& tokenizer_;
  bool render_special_;
  bool first_ = true;
  std::string raw_;     // undecided bytes (no clean-up) or every byte so far (clean-up)
  size_t emitted_ = 0;  // clean-up only: bytes of CleanUpSpaces(raw_) already returned
};

// The symbol (UTF-8) that stands for byte `b` in a byte-level BPE vocabulary (GPT-2's
// bytes_to_unicode): what a writer of such a vocabulary puts in tokenizer.ggml.tokens.
std::string Gpt2ByteSymbol(uint8_t b);

}  // namespace strata::text
