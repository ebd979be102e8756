// Pieces shared by the tokenizer's source files (tokenizer.cc, tokenizer_vocab.cc,
// tokenizer_bpe.cc, pre_tokenizer.cc); not part of the text library's interface.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace strata::text::internal {

// Token attributes (Tokenizer::attrs_), as llama.cpp's llama_token_attr.
inline constexpr uint32_t kAttrUnknown = 1u << 0;
inline constexpr uint32_t kAttrUnused = 1u << 1;
inline constexpr uint32_t kAttrNormal = 1u << 2;
inline constexpr uint32_t kAttrControl = 1u << 3;
inline constexpr uint32_t kAttrUserDefined = 1u << 4;
inline constexpr uint32_t kAttrByte = 1u << 5;

// --- UTF-8 (tokenizer_bpe.cc) ------------------------------------------------------------------

inline constexpr uint32_t kMaxCodepoint = 0x110000;

// Decodes like llama.cpp's unicode_cpts_from_utf8: each byte that does not start a well-formed
// (not necessarily shortest-form) sequence becomes U+FFFD.
std::vector<uint32_t> DecodeLenient(std::string_view s);

// Encodes like llama.cpp's unicode_cpt_to_utf8 (surrogates included). Values past U+10FFFF, which
// llama.cpp rejects with an exception, become U+FFFD.
void AppendUtf8(uint32_t cp, std::string& out);

inline size_t Utf8LenFromLead(char c) {
  static constexpr size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[static_cast<uint8_t>(c) >> 4];
}

// --- GPT-2 byte alphabet (tokenizer_bpe.cc) ----------------------------------------------------

// Byte b <-> code point: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order (GPT-2's bytes_to_unicode).
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> cp_to_byte;

  ByteAlphabet();
  static const ByteAlphabet& Get();
};

}  // namespace strata::text::internal
