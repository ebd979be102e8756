// Byte-level BPE: GPT-2's byte alphabet and the rank-ordered merge loop. The text is first split
// into words by the pre-tokenizer (pre_tokenizer.cc).
#include <algorithm>
#include <array>
#include <cstring>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace strata::text {
namespace internal {

std::vector<uint32_t> DecodeLenient(std::string_view s) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  size_t i = 0;
  auto cont = [&](size_t k) { return k < s.size() && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80; };
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    if (b0 < 0x80) {
      cps.push_back(b0);
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && cont(i + 1)) {
      cps.push_back(((b0 & 0x1Fu) << 6) | (s[i + 1] & 0x3F));
      i += 2;
    } else if ((b0 & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
      cps.push_back(((b0 & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3F));
      i += 3;
    } else if ((b0 & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      cps.push_back(((b0 & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
                    (s[i + 3] & 0x3F));
      i += 4;
    } else {
      cps.push_back(0xFFFD);
      i += 1;
    }
  }
  return cps;
}

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp >= kMaxCodepoint) cp = 0xFFFD;
  if (cp <= 0x7F) {
    out.push_back(static_cast<char>(cp));
  } else if (cp <= 0x7FF) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0xFFFF) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

ByteAlphabet::ByteAlphabet() {
  cp_to_byte.fill(-1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? b : 256 + extra++;
    AppendUtf8(cp, byte_to_utf8[b]);
    cp_to_byte[cp] = static_cast<int16_t>(b);
  }
}

const ByteAlphabet& ByteAlphabet::Get() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

}  // namespace internal

using internal::AppendUtf8;
using internal::ByteAlphabet;
using internal::DecodeLenient;
using internal::Utf8LenFromLead;

std::string Gpt2ByteSymbol(uint8_t b) { return ByteAlphabet::Get().byte_to_utf8[b]; }

absl::Status Tokenizer::InitBpe(std::vector<std::string> merges) {
  RETURN_IF_ERROR(InitPreTokenizer());  // may set add_bos_, clean_spaces_, ignore_merges_

  // "left right" -> rank; the first occurrence of a duplicate wins, as in llama.cpp.
  bpe_ranks_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    merges[i].resize(std::strlen(merges[i].c_str()));           // C-string semantics, as llama.cpp
    if (merges[i].find(' ', 1) == std::string::npos) continue;  // malformed: can never match
    bpe_ranks_.emplace(std::move(merges[i]), static_cast<int32_t>(i));
  }
  // Touch the shared table now rather than on the first Encode.
  ByteAlphabet::Get();
  return absl::OkStatus();
}

namespace {

struct Symbol {
  int prev;
  int next;
  uint32_t offset;
  uint32_t length;  // 0 once merged into its left neighbour
};

struct Bigram {
  int left;
  int right;
  int32_t rank;
  uint32_t length;
};

struct BigramAfter {  // lowest rank first, then leftmost
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::EncodeBpe(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramAfter> queue;
  std::string key;
  for (const std::string& word : PreTokenize(text)) {
    if (ignore_merges_) {
      int32_t id = Lookup(word);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    symbols.clear();
    for (size_t off = 0; off < word.size();) {
      const auto len =
          static_cast<uint32_t>(std::min(word.size() - off, Utf8LenFromLead(word[off])));
      const int index = static_cast<int>(symbols.size());
      symbols.push_back(
          {index - 1, off + len == word.size() ? -1 : index + 1, static_cast<uint32_t>(off), len});
      off += len;
    }
    auto add_bigram = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = symbols[left];
      const Symbol& r = symbols[right];
      key.assign(word, l.offset, l.length);
      key.push_back(' ');
      key.append(word, r.offset, r.length);
      auto it = bpe_ranks_.find(key);
      if (it == bpe_ranks_.end()) return;
      queue.push({left, right, it->second, l.length + r.length});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = symbols[b.left];
      Symbol& r = symbols[b.right];
      // Stale: one side was merged since this pair was queued (lengths only grow).
      if (l.length == 0 || r.length == 0 || l.length + r.length != b.length) continue;
      l.length += r.length;
      r.length = 0;
      l.next = r.next;
      if (r.next >= 0) symbols[r.next].prev = b.left;
      add_bigram(l.prev, b.left);
      add_bigram(b.left, l.next);
    }
    for (const Symbol& s : symbols) {
      if (s.length == 0) continue;
      const std::string_view piece = std::string_view(word).substr(s.offset, s.length);
      int32_t id = Lookup(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      // Not in the vocabulary: one token per byte where one exists (llama.cpp does the same).
      for (char c : piece) {
        int32_t byte_id = Lookup(std::string_view(&c, 1));
        if (byte_id >= 0) out.push_back(byte_id);
      }
    }
  }
}

std::string Tokenizer::BpeTextToBytes(std::string_view text) {
  const ByteAlphabet& alphabet = ByteAlphabet::Get();
  std::string out;
  out.reserve(text.size());
  for (uint32_t cp : DecodeLenient(text)) {
    if (cp < alphabet.cp_to_byte.size() && alphabet.cp_to_byte[cp] >= 0) {
      out.push_back(static_cast<char>(alphabet.cp_to_byte[cp]));
      continue;
    }
    // Outside the alphabet: llama.cpp's llama_decode_text writes this marker.
    std::string utf8;
    AppendUtf8(cp, utf8);
    out += "[UNK_BYTE_0x";
    for (char c : utf8) out += absl::StrFormat("%02x", static_cast<uint8_t>(c));
    out.append(text);
    out += "]";
  }
  return out;
}

}  // namespace strata::text
