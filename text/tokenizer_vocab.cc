// Vocabulary set-up: the `tokenizer.*` metadata of a GGUF, the model family's defaults, special
// ids and the end-of-generation set. Behaviour follows llama.cpp's src/llama-vocab.cpp
// (llama_vocab::impl::load).
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/strings.h"
#include "gguf/reader.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace strata::text {

using internal::kAttrByte;
using internal::kAttrControl;
using internal::kAttrNormal;
using internal::kAttrUnknown;
using internal::kAttrUnused;
using internal::kAttrUserDefined;

namespace {

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

// ---------------------------------------------------------------------------------------------
// GGUF

namespace {

absl::StatusOr<std::optional<int32_t>> OptionalId(const gguf::GgufFile& gguf,
                                                  std::string_view key) {
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
    if (scores->type == gguf::GgufType::kArray && (scores->elem_type == gguf::GgufType::kFloat32 ||
                                                   scores->elem_type == gguf::GgufType::kFloat64)) {
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

}  // namespace strata::text
