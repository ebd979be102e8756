// Token sampling. The random draw for a token depends only on (seed, absolute position), so a
// generation that is replayed, verified speculatively or split differently draws the same numbers
// and picks the same tokens.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace strata::model {

struct SamplingParams {
  float temperature = 0.0f;     // <= 0: greedy (argmax, lowest id on ties)
  int top_k = 40;               // <= 0: off
  float top_p = 1.0f;           // >= 1: off
  float min_p = 0.0f;           // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off; applied to the last `repeat_last_n` tokens
  int repeat_last_n = 64;
  uint64_t seed = 0;

  bool greedy() const { return temperature <= 0.0f; }
  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// Uniform double in [0, 1) determined by (seed, position).
double PositionUniform(uint64_t seed, int64_t position);

// Index of the largest logit (lowest index among equals).
int32_t Argmax(std::span<const float> logits);

// Probabilities after the sampling chain (penalty, top-k, top-p, min-p, temperature), as
// (token, probability) pairs in decreasing probability; what Sample draws from.
struct Candidate {
  int32_t token;
  float prob;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params) : params_(params) {}
  const SamplingParams& params() const { return params_; }

  // Picks the token for absolute position `position` from `logits` (n_vocab values); `history`
  // is the text so far (prompt and generated), used by the repetition penalty.
  int32_t Sample(std::span<const float> logits,
                 int64_t position,
                 std::span<const int32_t> history) const;

  // The distribution Sample draws from (after every filter), for speculative verification.
  std::vector<Candidate> Distribution(std::span<const float> logits,
                                      std::span<const int32_t> history) const;

 private:
  SamplingParams params_;
};

}  // namespace strata::model
