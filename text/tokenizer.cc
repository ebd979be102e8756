// Vocabulary set-up, special-token handling, Encode dispatch and decoding. The BPE and SPM merge
// loops live in tokenizer_bpe.cc and tokenizer_spm.cc. Behaviour follows llama.cpp's
// src/llama-vocab.cpp (llama_vocab::impl::load, tokenize, token_to_piece, detokenize).
#include "text/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"
#include "gguf/reader.h"

namespace strata::text {
namespace {

// Token attributes, as llama.cpp's llama_token_attr.
constexpr uint32_t kAttrUnknown = 1u << 0;
constexpr uint32_t kAttrUnused = 1u << 1;
constexpr uint32_t kAttrNormal = 1u << 2;
constexpr uint32_t kAttrControl = 1u << 3;
constexpr uint32_t kAttrUserDefined = 1u << 4;
constexpr uint32_t kAttrByte = 1u << 5;

uint32_t AttrFromType(TokenType type) {
  switch (type) {
    case TokenType::kUnknown:
      return kAttrUnknown;
    case TokenType::kUnused:
      return kAttrUnused;
    case TokenType::kNormal:
      return kAttrNormal;
    case TokenType::kControl:
      return kAttrControl;
    case TokenType::kUserDefined:
      return kAttrUserDefined;
    case TokenType::kByte:
      return kAttrByte;
    default:
      return 0;
  }
}

// Token texts llama.cpp looks for when the metadata leaves an id out (first match wins here).
// clang-format off
constexpr std::string_view kEotTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"};
constexpr std::string_view kFimPreTexts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
    "<|code_prefix|>", "<|prefix|>"};
constexpr std::string_view kFimSufTexts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>"};
constexpr std::string_view kFimMidTexts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
    "<|code_middle|>", "<|middle|>"};
// Fill-in-the-middle pad/repo/file-separator tokens also end a generation.
constexpr std::string_view kFimPadTexts[] = {
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"};
constexpr std::string_view kFimRepTexts[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"};
constexpr std::string_view kFimSepTexts[] = {"<|file_sep|>"};
// Texts of tokens that end a generation.
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~["};
// clang-format on

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581

void ReplaceAll(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// A run of the input: plain text (token < 0) or one special token.
struct Fragment {
  int32_t token;
  size_t offset;
  size_t length;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocab(TokenizerVocab vocab) {
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  RETURN_IF_ERROR(tok->Init(std::move(vocab)));
  return tok;
}

absl::Status Tokenizer::Init(TokenizerVocab vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer: the vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer: the vocabulary is too large");
  }
  if (!vocab.scores.empty() && vocab.scores.size() < n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer: %d scores for %d tokens", vocab.scores.size(), n));
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() < n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tokenizer: %d token types for %d tokens", vocab.token_types.size(), n));
  }

  // Family defaults (llama_vocab::impl::load).
  int32_t bos = -1, eos = -1, unk = -1;
  if (vocab.model == "llama") {
    kind_ = Kind::kSpm;
    bos = 1, eos = 2, unk = 0;
    add_bos_ = true;
    add_space_prefix_ = true;
    clean_spaces_ = false;
  } else if (vocab.model == "gpt2") {
    kind_ = Kind::kBpe;
    bos = 11, eos = 11;
    add_bos_ = false;
    add_space_prefix_ = false;
    clean_spaces_ = true;
  } else {
    return absl::UnimplementedError(StrCat(
        "tokenizer: unsupported tokenizer model '", vocab.model, "' (supported: gpt2, llama)"));
  }

  tokens_ = std::move(vocab.tokens);
  scores_.assign(n, 0.0f);
  attrs_.assign(n, kAttrNormal);
  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // llama.cpp reads token texts as C strings: they end at the first NUL, and an empty one is
    // renamed so that it cannot match text.
    tokens_[i].resize(std::strlen(tokens_[i].c_str()));
    if (tokens_[i].empty()) tokens_[i] = StrCat("[EMPTY_", i, "]");
    token_to_id_.insert_or_assign(tokens_[i], static_cast<int32_t>(i));
    if (!vocab.scores.empty()) scores_[i] = vocab.scores[i];
    if (!vocab.token_types.empty()) attrs_[i] = AttrFromType(vocab.token_types[i]);
  }

  if (kind_ == Kind::kBpe) {
    pre_ = vocab.pre.empty() ? "default" : vocab.pre;
    RETURN_IF_ERROR(InitBpe(std::move(vocab.merges)));  // may set add_bos_, clean_spaces_
  } else {
    pre_ = "default";
  }
  if (vocab.add_space_prefix) add_space_prefix_ = *vocab.add_space_prefix;
  if (vocab.add_bos) add_bos_ = *vocab.add_bos;
  if (vocab.add_eos) add_eos_ = *vocab.add_eos;
  chat_template_ = std::move(vocab.chat_template);
  AssignSpecialIds(vocab, bos, eos, unk);

  // gpt-oss: these are always rendered.
  for (std::string_view text : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    int32_t id = Lookup(text);
    if (id >= 0) attrs_[id] = kAttrUserDefined;
  }
  DetectSpecialTokens();
  return absl::OkStatus();
}

void Tokenizer::AssignSpecialIds(const TokenizerVocab& vocab,
                                 int32_t bos,
                                 int32_t eos,
                                 int32_t unk) {
  // A default outside the vocabulary is dropped; an explicit id outside it is ignored in favour
  // of the default, as llama.cpp does.
  const auto n = static_cast<int32_t>(tokens_.size());
  auto pick = [&](int32_t fallback, const std::optional<int32_t>& explicit_id) {
    int32_t id = fallback >= 0 && fallback < n ? fallback : -1;
    if (explicit_id && *explicit_id >= 0 && *explicit_id < n) id = *explicit_id;
    return id;
  };
  bos_id_ = pick(bos, vocab.bos_id);
  eos_id_ = pick(eos, vocab.eos_id);
  eot_id_ = pick(-1, vocab.eot_id);
  eom_id_ = pick(-1, vocab.eom_id);
  unk_id_ = pick(unk, vocab.unk_id);
  sep_id_ = pick(-1, vocab.sep_id);
  pad_id_ = pick(-1, vocab.pad_id);
  int32_t fim_pad = pick(-1, vocab.fim_pad_id);
  int32_t fim_rep = pick(-1, vocab.fim_rep_id);
  int32_t fim_sep = pick(-1, vocab.fim_sep_id);

  // Ids the metadata left out are found by their text; such tokens become control tokens.
  auto detect = [&](int32_t& id, auto& texts) {
    if (id >= 0) return;
    for (std::string_view text : texts) {
      int32_t found = Lookup(text);
      if (found >= 0) {
        id = found;
        attrs_[found] |= kAttrControl;
        return;
      }
    }
  };
  detect(eot_id_, kEotTexts);
  const std::string_view eom_texts[] = {"<|eom_id|>"};
  detect(eom_id_, eom_texts);
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1;
  detect(fim_pre, kFimPreTexts);
  detect(fim_suf, kFimSufTexts);
  detect(fim_mid, kFimMidTexts);
  detect(fim_pad, kFimPadTexts);
  detect(fim_rep, kFimRepTexts);
  detect(fim_sep, kFimSepTexts);
  BuildEndOfGenerationSet({fim_pad, fim_rep, fim_sep, eos_id_, eot_id_, eom_id_});
}

void Tokenizer::BuildEndOfGenerationSet(std::initializer_list<int32_t> ids) {
  std::vector<int32_t> eog;
  for (int32_t id : ids) {
    if (id >= 0) eog.push_back(id);
  }
  for (std::string_view text : kEogTexts) {
    int32_t id = Lookup(text);
    if (id >= 0) {
      eog.push_back(id);
      attrs_[id] |= kAttrControl;
    }
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  auto eog_has = [&](std::string_view text) {
    int32_t id = Lookup(text);
    return id >= 0 && std::binary_search(eog.begin(), eog.end(), id) ? id : -1;
  };
  auto eog_remove = [&](int32_t id, uint32_t attr) {
    eog.erase(std::remove(eog.begin(), eog.end(), id), eog.end());
    attrs_[id] = attr;
  };
  // o200k_harmony / solar-open: <|end|> does not end a generation there.
  const int32_t end_id = eog_has("<|end|>");
  if (end_id >= 0 &&
      ((eog_has("<|return|>") >= 0 && eog_has("<|call|>") >= 0) ||
       ((eog_has("<|call|>") >= 0 || eog_has("<|calls|>") >= 0) && eog_has("<|flush|>") >= 0))) {
    eog_remove(end_id, kAttrUserDefined);
  }
  // gemma4 / plamo: </s> is a normal token there.
  const int32_t s_id = eog_has("</s>");
  if (s_id >= 0 && (eog_has("<|tool_response>") >= 0 || eog_has("<|plamo:eos|>") >= 0)) {
    eog_remove(s_id, kAttrNormal);
  }
  eog_ids_ = std::move(eog);
}

void Tokenizer::DetectSpecialTokens() {
  special_tokens_.clear();
  for (int32_t id = 0; id < vocab_size(); ++id) {
    if (attrs_[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) {
      special_tokens_.push_back(id);
    }
  }
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(), [&](int32_t a, int32_t b) {
    return tokens_[a].size() > tokens_[b].size();
  });
}

int32_t Tokenizer::Lookup(std::string_view text) const {
  auto it = token_to_id_.find(absl::string_view(text.data(), text.size()));
  return it == token_to_id_.end() ? -1 : it->second;
}

std::optional<int32_t> Tokenizer::FindToken(std::string_view text) const {
  int32_t id = Lookup(text);
  if (id < 0) return std::nullopt;
  return id;
}

std::string_view Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return tokens_[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return TokenType::kUndefined;
  const uint32_t a = attrs_[id];
  if (a & kAttrControl) return TokenType::kControl;
  if (a & kAttrUserDefined) return TokenType::kUserDefined;
  if (a & kAttrUnknown) return TokenType::kUnknown;
  if (a & kAttrByte) return TokenType::kByte;
  if (a & kAttrUnused) return TokenType::kUnused;
  if (a & kAttrNormal) return TokenType::kNormal;
  return TokenType::kUndefined;
}

bool Tokenizer::IsControlOrUnknown(int32_t id) const {
  return (attrs_[id] & (kAttrControl | kAttrUnknown)) != 0;
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

int32_t Tokenizer::SpmByteToken(uint8_t byte) const {
  static constexpr char kHex[] = "0123456789ABCDEF";
  const char buf[6] = {'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
  int32_t id = Lookup(std::string_view(buf, 6));
  if (id < 0) id = Lookup(std::string_view(reinterpret_cast<const char*>(&byte), 1));
  // llama.cpp throws here (std::out_of_range); the unknown token is the graceful equivalent.
  if (id < 0) id = unk_id_;
  return id;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text,
                                       bool add_special,
                                       bool parse_special) const {
  // Split out special tokens, longest first (tokenizer_st_partition).
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t special : special_tokens_) {
    if (!parse_special && IsControlOrUnknown(special)) continue;
    const std::string& needle = tokens_[special];
    if (text.find(needle) == std::string_view::npos) continue;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view window = text.substr(0, f.offset + f.length);
      size_t pos = f.offset;
      while (true) {
        size_t hit = window.find(needle, pos);
        if (hit == std::string_view::npos) break;
        if (hit > pos) next.push_back({-1, pos, hit - pos});
        next.push_back({special, hit, needle.size()});
        pos = hit + needle.size();
      }
      if (pos < f.offset + f.length) next.push_back({-1, pos, f.offset + f.length - pos});
    }
    fragments.swap(next);
  }

  std::vector<int32_t> out;
  if (add_special && add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
  bool prev_special = true;  // SPM: a space is prefixed to text that starts or follows a special
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    std::string_view piece = text.substr(f.offset, f.length);
    if (kind_ == Kind::kSpm) {
      std::string escaped;
      if (add_space_prefix_ && prev_special) escaped = " ";
      escaped.append(piece);
      ReplaceAll(escaped, " ", kSpmSpace);
      EncodeSpm(escaped, out);
    } else {
      EncodeBpe(piece, out);
    }
    prev_special = false;
  }
  if (add_special && add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::vector<int32_t> Tokenizer::EncodeChatPrompt(std::string_view prompt) const {
  bool has_bos_text = false;
  if (bos_id_ >= 0) {
    const std::string& bos = tokens_[bos_id_];
    has_bos_text = prompt.substr(0, bos.size()) == bos;
  }
  return Encode(prompt, /*add_special=*/!has_bos_text, /*parse_special=*/true);
}

std::string Tokenizer::TokenPiece(int32_t id, bool render_special) const {
  if (id < 0 || id >= vocab_size()) return {};
  const uint32_t attr = attrs_[id];
  if (!render_special && (attr & (kAttrControl | kAttrUnknown))) return {};
  const std::string& text = tokens_[id];
  if (attr & (kAttrControl | kAttrUnknown | kAttrUserDefined)) return text;
  if (attr & kAttrNormal) {
    if (kind_ == Kind::kSpm) {
      std::string out = text;
      ReplaceAll(out, kSpmSpace, " ");
      return out;
    }
    return BpeTextToBytes(text);
  }
  if (attr & kAttrByte) {
    // "<0xXX>"
    if (text.size() < 5) return {};
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(text[3]), lo = hex(text[4]);
    if (hi < 0) return {};
    int value = lo < 0 ? hi : hi * 16 + lo;
    return std::string(1, static_cast<char>(value));
  }
  return {};
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  bool strip_space = add_space_prefix_;
  for (int32_t id : ids) {
    std::string piece = TokenPiece(id, render_special);
    size_t skip = (strip_space && !piece.empty() && piece[0] == ' ') ? 1 : 0;
    out.append(piece, skip, std::string::npos);
    strip_space = false;
  }
  if (clean_spaces_) out = CleanUpSpaces(std::move(out));
  return out;
}

// A literal port of the three passes in llama_vocab::impl::detokenize, including their quirks
// (the second pass blanks the space after " ' " so it cannot start another match).
std::string Tokenizer::CleanUpSpaces(std::string t) {
  // Pass 1: " ?", " !", " .", " ," lose the space.
  size_t n = t.size();
  size_t total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
    t[total++] = x;
  }
  t.resize(total);
  // Pass 2: " ' " becomes "'".
  n = t.size();
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
      --total;
      t[++i] = '\0';
    }
    t[total++] = x;
  }
  t.resize(total);
  // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
  n = t.size();
  total = n ? 1 : 0;
  for (size_t i = 1; i < n; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
      const char x1 = t[i + 1];
      if (x1 == 't' || x1 == 'd') {
        // kept
      } else if (x1 == 's' || x1 == 'm') {
        --total;
      } else if (i + 2 < n) {
        const char x2 = t[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
      }
    }
    t[total++] = x;
  }
  t.resize(total);
  return t;
}

// ---------------------------------------------------------------------------------------------
// GGUF

namespace {

absl::StatusOr<std::optional<int32_t>> OptionalId(const gguf::GgufFile& gguf, std::string_view key) {
  if (gguf.Find(key) == nullptr) return std::optional<int32_t>();
  ASSIGN_OR_RETURN(uint64_t v, gguf.GetUint(key));
  if (v > static_cast<uint64_t>(INT32_MAX)) return std::optional<int32_t>();
  return std::optional<int32_t>(static_cast<int32_t>(v));
}

absl::StatusOr<std::optional<bool>> OptionalBool(const gguf::GgufFile& gguf, std::string_view key) {
  if (gguf.Find(key) == nullptr) return std::optional<bool>();
  ASSIGN_OR_RETURN(bool v, gguf.GetBool(key));
  return std::optional<bool>(v);
}

}  // namespace

absl::StatusOr<TokenizerVocab> ReadTokenizerVocab(const gguf::GgufFile& gguf) {
  TokenizerVocab v;
  ASSIGN_OR_RETURN(std::string_view model, gguf.GetString("tokenizer.ggml.model"));
  v.model = std::string(model);
  if (v.model != "gpt2" && v.model != "llama") {
    return absl::UnimplementedError(StrCat(
        gguf.name(), ": unsupported tokenizer model '", model, "' (supported: gpt2, llama)"));
  }
  if (gguf.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(std::string_view pre, gguf.GetString("tokenizer.ggml.pre"));
    v.pre = std::string(pre);
  }
  ASSIGN_OR_RETURN(const std::vector<std::string_view>* tokens,
                   gguf.GetStringArray("tokenizer.ggml.tokens"));
  v.tokens.assign(tokens->begin(), tokens->end());
  const size_t n = v.tokens.size();

  if (const gguf::GgufValue* scores = gguf.Find("tokenizer.ggml.scores")) {
    if (scores->type == gguf::GgufType::kArray &&
        (scores->elem_type == gguf::GgufType::kFloat32 || scores->elem_type == gguf::GgufType::kFloat64)) {
      ASSIGN_OR_RETURN(v.scores, gguf.GetFloatArray("tokenizer.ggml.scores"));
    } else {
      ASSIGN_OR_RETURN(std::vector<int64_t> iscores, gguf.GetIntArray("tokenizer.ggml.scores"));
      v.scores.assign(iscores.begin(), iscores.end());
    }
    if (v.scores.size() < n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tokenizer.ggml.scores has %d entries for %d tokens",
                          gguf.name(),
                          v.scores.size(),
                          n));
    }
  }
  if (gguf.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(std::vector<int64_t> types, gguf.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() < n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: tokenizer.ggml.token_type has %d entries for %d tokens",
                          gguf.name(),
                          types.size(),
                          n));
    }
    v.token_types.reserve(types.size());
    for (int64_t t : types) v.token_types.push_back(static_cast<TokenType>(t));
  }
  if (v.model == "gpt2") {
    ASSIGN_OR_RETURN(const std::vector<std::string_view>* merges,
                     gguf.GetStringArray("tokenizer.ggml.merges"));
    v.merges.assign(merges->begin(), merges->end());
  }

  struct IdKey {
    std::string_view key;
    std::optional<int32_t>* field;
  };
  const IdKey ids[] = {
      {"tokenizer.ggml.bos_token_id", &v.bos_id},
      {"tokenizer.ggml.eos_token_id", &v.eos_id},
      {"tokenizer.ggml.eot_token_id", &v.eot_id},
      {"tokenizer.ggml.eom_token_id", &v.eom_id},
      {"tokenizer.ggml.unknown_token_id", &v.unk_id},
      {"tokenizer.ggml.seperator_token_id", &v.sep_id},  // sic, as llama.cpp writes it
      {"tokenizer.ggml.padding_token_id", &v.pad_id},
      {"tokenizer.ggml.fim_pad_token_id", &v.fim_pad_id},
      {"tokenizer.ggml.fim_rep_token_id", &v.fim_rep_id},
      {"tokenizer.ggml.fim_sep_token_id", &v.fim_sep_id},
  };
  for (const IdKey& k : ids) {
    ASSIGN_OR_RETURN(*k.field, OptionalId(gguf, k.key));
  }
  ASSIGN_OR_RETURN(v.add_bos, OptionalBool(gguf, "tokenizer.ggml.add_bos_token"));
  ASSIGN_OR_RETURN(v.add_eos, OptionalBool(gguf, "tokenizer.ggml.add_eos_token"));
  ASSIGN_OR_RETURN(v.add_space_prefix, OptionalBool(gguf, "tokenizer.ggml.add_space_prefix"));
  if (gguf.Find("tokenizer.chat_template") != nullptr) {
    ASSIGN_OR_RETURN(std::string_view tmpl, gguf.GetString("tokenizer.chat_template"));
    v.chat_template = std::string(tmpl);
  }
  return v;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& gguf) {
  ASSIGN_OR_RETURN(TokenizerVocab v, ReadTokenizerVocab(gguf));
  auto tok = FromVocab(std::move(v));
  if (!tok.ok()) {
    return absl::Status(tok.status().code(), StrCat(gguf.name(), ": ", tok.status().message()));
  }
  return tok;
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder

namespace {

// Length of the valid UTF-8 sequence starting at s[0]: > 0 when complete and valid, 0 when the
// bytes so far are a valid but incomplete prefix, < 0 (minus the bytes to replace) when invalid.
int Utf8SequenceLength(std::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return 1;
  int need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
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
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (static_cast<size_t>(k) >= s.size()) return 0;
    const auto b = static_cast<uint8_t>(s[k]);
    if (b < lo || b > hi) return -k;
    lo = 0x80, hi = 0xBF;
  }
  return need + 1;
}

// Bytes of clean-up output held back: CleanUpSpaces decides about a byte from at most the next
// few bytes, so everything before this margin is final.
constexpr size_t kCleanUpMargin = 16;

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool render_special)
    : tokenizer_(tokenizer), render_special_(render_special) {}

std::string StreamDecoder::TakeValid(std::string_view bytes, bool final, size_t* consumed) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    int len = Utf8SequenceLength(bytes.substr(i));
    if (len > 0) {
      out.append(bytes.substr(i, len));
      i += len;
    } else if (len == 0 && !final) {
      break;  // wait for the rest of the character
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for the maximal invalid subpart
      i += len == 0 ? bytes.size() - i : static_cast<size_t>(-len);
    }
  }
  *consumed = i;
  return out;
}

std::string StreamDecoder::Push(int32_t id) {
  std::string piece = tokenizer_.TokenPiece(id, render_special_);
  if (first_ && tokenizer_.add_space_prefix() && !piece.empty() && piece[0] == ' ') {
    piece.erase(0, 1);
  }
  first_ = false;
  raw_.append(piece);
  size_t consumed = 0;
  if (!tokenizer_.clean_spaces()) {
    std::string out = TakeValid(raw_, /*final=*/false, &consumed);
    raw_.erase(0, consumed);
    return out;
  }
  const std::string cleaned = Tokenizer::CleanUpSpaces(raw_);
  if (cleaned.size() <= emitted_ + kCleanUpMargin) return {};
  const size_t limit = cleaned.size() - kCleanUpMargin;
  std::string out = TakeValid(std::string_view(cleaned).substr(emitted_, limit - emitted_),
                              /*final=*/false,
                              &consumed);
  emitted_ += consumed;
  return out;
}

std::string StreamDecoder::Flush() {
  size_t consumed = 0;
  std::string out;
  if (!tokenizer_.clean_spaces()) {
    out = TakeValid(raw_, /*final=*/true, &consumed);
  } else {
    const std::string cleaned = Tokenizer::CleanUpSpaces(raw_);
    out = TakeValid(std::string_view(cleaned).substr(std::min(emitted_, cleaned.size())),
                    /*final=*/true,
                    &consumed);
  }
  raw_.clear();
  emitted_ = 0;
  first_ = true;
  return out;
}

}  // namespace strata::text
