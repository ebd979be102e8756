// SentencePiece-style merging (llama.cpp's llm_tokenizer_spm): start from single UTF-8
// characters, repeatedly merge the adjacent pair whose concatenation is the vocabulary entry with
// the highest score (leftmost on ties), and spell whatever is left outside the vocabulary as
// <0xXX> byte tokens.
#include <algorithm>
#include <queue>
#include <string_view>
#include <vector>

#include "text/tokenizer.h"
#include "text/tokenizer_internal.h"

namespace strata::text {
namespace {

using internal::Utf8LenFromLead;

struct Symbol {
  int prev;
  int next;
  uint32_t offset;
  uint32_t length;  // 0 once merged into its left neighbour
};

struct Bigram {
  int left;
  int right;
  float score;
  uint32_t length;
};

struct BigramBefore {  // highest score first, then leftmost
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::EncodeSpm(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  for (size_t off = 0; off < text.size();) {
    const auto len = static_cast<uint32_t>(std::min(text.size() - off, Utf8LenFromLead(text[off])));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        {index - 1, off + len == text.size() ? -1 : index + 1, static_cast<uint32_t>(off), len});
    off += len;
  }

  std::priority_queue<Bigram, std::vector<Bigram>, BigramBefore> queue;
  auto add_bigram = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    // Adjacent symbols are contiguous in `text`.
    const int32_t id = Lookup(text.substr(l.offset, l.length + r.length));
    if (id < 0) return;
    queue.push({left, right, scores_[id], l.length + r.length});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) add_bigram(i - 1, i);

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    if (l.length == 0 || r.length == 0 || l.length + r.length != b.length) continue;
    l.length += r.length;
    r.length = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    add_bigram(l.prev, b.left);
    add_bigram(b.left, l.next);
  }

  if (symbols.empty()) return;
  for (int i = 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    const std::string_view piece = text.substr(s.offset, s.length);
    const int32_t id = Lookup(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    // Every merged symbol is a vocabulary entry, so only single characters get here.
    for (char c : piece) {
      const int32_t byte_id = SpmByteToken(static_cast<uint8_t>(c));
      if (byte_id >= 0) out.push_back(byte_id);
    }
  }
}

}  // namespace strata::text
