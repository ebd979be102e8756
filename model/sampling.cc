#include "model/sampling.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "common/strings.h"

namespace strata::model {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(StrCat("temperature must be >= 0, got ", temperature));
  }
  if (!(top_p > 0) || !std::isfinite(top_p)) {
    return absl::InvalidArgumentError(StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (!(min_p >= 0 && min_p <= 1)) {
    return absl::InvalidArgumentError(StrCat("min_p must be in [0, 1], got ", min_p));
  }
  if (!(repeat_penalty > 0) || !std::isfinite(repeat_penalty)) {
    return absl::InvalidArgumentError(StrCat("repeat_penalty must be > 0, got ", repeat_penalty));
  }
  if (repeat_last_n < 0) return absl::InvalidArgumentError("repeat_last_n must be >= 0");
  return absl::OkStatus();
}

double PositionUniform(uint64_t seed, int64_t position) {
  uint64_t h = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(logits.size()); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

std::vector<Candidate> Sampler::Distribution(std::span<const float> logits,
                                             std::span<const int32_t> history) const {
  const int32_t n = static_cast<int32_t>(logits.size());
  std::vector<float> adjusted(logits.begin(), logits.end());
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t start = history.size() > static_cast<size_t>(params_.repeat_last_n)
                             ? history.size() - params_.repeat_last_n
                             : 0;
    absl::flat_hash_set<int32_t> seen(history.begin() + start, history.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= n) continue;
      float& l = adjusted[t];
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }
  // Candidates in decreasing logit order, ties by lower id: a total order, so the result does not
  // depend on the sort algorithm.
  std::vector<int32_t> ids(n);
  for (int32_t i = 0; i < n; ++i) ids[i] = i;
  auto better = [&](int32_t a, int32_t b) {
    return adjusted[a] != adjusted[b] ? adjusted[a] > adjusted[b] : a < b;
  };
  int32_t keep = n;
  if (params_.top_k > 0 && params_.top_k < n) {
    keep = params_.top_k;
    std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), better);
    ids.resize(keep);
  } else {
    std::sort(ids.begin(), ids.end(), better);
  }
  if (params_.greedy()) return {{ids[0], 1.0f}};

  // Softmax at temperature over the kept candidates.
  const double inv_t = 1.0 / params_.temperature;
  const double top = adjusted[ids[0]];
  std::vector<double> p(keep);
  double sum = 0;
  for (int32_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((adjusted[ids[i]] - top) * inv_t));
  for (double& x : p) x /= sum;
  // top-p: smallest prefix whose mass reaches top_p.
  if (params_.top_p < 1.0f) {
    double cum = 0;
    int32_t cut = keep;
    for (int32_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  // min-p: drop candidates below min_p times the most likely one.
  if (params_.min_p > 0) {
    const double floor = p[0] * params_.min_p;
    int32_t cut = 1;
    while (cut < keep && p[cut] >= floor) ++cut;
    keep = cut;
  }
  double kept = 0;
  for (int32_t i = 0; i < keep; ++i) kept += p[i];
  std::vector<Candidate> out(keep);
  for (int32_t i = 0; i < keep; ++i) out[i] = {ids[i], static_cast<float>(p[i] / kept)};
  return out;
}

int32_t Sampler::Sample(std::span<const float> logits,
                        int64_t position,
                        std::span<const int32_t> history) const {
  if (params_.greedy() && params_.repeat_penalty == 1.0f) return Argmax(logits);
  std::vector<Candidate> dist = Distribution(logits, history);
  if (dist.size() == 1) return dist[0].token;
  const double u = PositionUniform(params_.seed, position);
  double cum = 0;
  for (const Candidate& c : dist) {
    cum += c.prob;
    if (u < cum) return c.token;
  }
  return dist.back().token;
}

}  // namespace strata::model
