// Helpers shared by the CUDA span tests (single-device and tensor-parallel): tiny models, rows,
// and distances between hidden states.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tests/testing/tiny_model.h"

namespace strata::testkit {

// A tiny random model written to a temporary file.
inline std::string TinyModel(const TinyModelSpec& spec) {
  const std::string path = TempPath(".gguf");
  EXPECT_TRUE(WriteTinyModel(spec, path).ok());
  return path;
}

inline std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Rows at positions first_pos, first_pos + 1, ... of the sequences `seqs`.
inline std::vector<model::Row> Rows(int32_t first_pos, int n, model::SeqMask seqs = 1) {
  std::vector<model::Row> rows(n);
  for (int i = 0; i < n; ++i) rows[i] = {first_pos + i, seqs};
  return rows;
}

inline bool BitEqual(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

struct Distance {
  double rel_l2 = 0;    // |x - ref| / |ref|
  double max_diff = 0;  // max |x - ref|
  double max_ref = 0;   // max |ref|
};

inline Distance Measure(const std::vector<float>& x, const std::vector<float>& ref) {
  Distance d;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = static_cast<double>(x[i]) - ref[i];
    err2 += e * e;
    ref2 += static_cast<double>(ref[i]) * ref[i];
    d.max_diff = std::max(d.max_diff, std::fabs(e));
    d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  d.rel_l2 = std::sqrt(err2 / std::max(ref2, 1e-30));
  return d;
}

}  // namespace strata::testkit
