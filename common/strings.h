// String concatenation that accepts std::string_view. Debian's abseil keeps absl::string_view
// distinct from std::string_view, so absl::StrCat rejects the latter; use strata::StrCat instead.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace strata {
namespace internal {

inline void AppendPiece(std::string& out, std::string_view s) { out.append(s); }
inline void AppendPiece(std::string& out, const char* s) { out.append(s); }
inline void AppendPiece(std::string& out, const std::string& s) { out.append(s); }
inline void AppendPiece(std::string& out, char c) { out.push_back(c); }
inline void AppendPiece(std::string& out, absl::string_view s) { out.append(s.data(), s.size()); }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T> || std::is_enum_v<T>>>
inline void AppendPiece(std::string& out, T v) {
  if constexpr (std::is_enum_v<T>) {
    absl::StrAppend(&out, static_cast<std::underlying_type_t<T>>(v));
  } else {
    absl::StrAppend(&out, v);
  }
}

}  // namespace internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (internal::AppendPiece(out, args), ...);
  return out;
}

}  // namespace strata
