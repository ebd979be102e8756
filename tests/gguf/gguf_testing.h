// Helpers shared by the GGUF reader/writer tests: parsing bytes, and expectations on a failed
// Status or StatusOr.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gguf/reader.h"

namespace strata::testkit {

using Bytes = std::vector<uint8_t>;

inline absl::StatusOr<std::unique_ptr<gguf::GgufFile>> ParseBytes(const Bytes& bytes) {
  return gguf::GgufFile::Parse(bytes.data(), bytes.size(), "test.gguf");
}

// Asserts that `expr` (a Status or StatusOr) failed with `code` and a message containing `what`.
#define EXPECT_GGUF_ERROR(expr, want_code, want_text)                              \
  do {                                                                             \
    const absl::Status _s = ::strata::testkit::ToStatus(expr);                     \
    EXPECT_EQ(_s.code(), want_code) << _s;                                         \
    EXPECT_THAT(std::string(_s.message()), ::testing::HasSubstr(want_text)) << _s; \
  } while (0)

inline absl::Status ToStatus(const absl::Status& s) { return s; }

template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

inline Bytes RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

}  // namespace strata::testkit
