// Helpers shared by the tokenizer tests: a strict UTF-8 check and printable byte strings.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

namespace strata::testkit {

// Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF).
inline bool IsValidUtf8(std::string_view s) {
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

inline std::string Printable(const std::string& s) {
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

}  // namespace strata::testkit
