// Lookups, special-token splitting and Encode dispatch, decoding and the stream decoder. The
// vocabulary is set up in tokenizer_vocab.cc; the BPE and SPM merge loops live in tokenizer_bpe.cc
// and tokenizer_spm.cc. Behaviour follows llama.cpp's src/llama-vocab.cpp (tokenize,
// token_to_piece, detokenize).
#include "text/tokenizer.h"

#include <algorithm>
#include <utility>

#include "text/tokenizer_internal.h"

namespace strata::text {

using internal::kAttrByte;
using internal::kAttrControl;
using internal::kAttrNormal;
using internal::kAttrUnknown;
using internal::kAttrUnused;
using internal::kAttrUserDefined;

namespace {

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
