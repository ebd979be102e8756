// Helpers shared by the CUDA kernel tests: seeded random inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace strata::testkit {

// `n` draws from a normal distribution of mean 0 and deviation `scale`, fixed by `seed`.
inline std::vector<float> Normal(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace strata::testkit
