#include "harness/linkem/token_bucket.h"

#include <algorithm>
#include <cmath>

namespace strata::linkem {

void TokenBucket::SetRate(double bytes_per_second, int64_t now_ns) {
  rate_ = std::max(0.0, bytes_per_second);
  burst_ = rate_ > 0 ? std::max(kMinBurstBytes, rate_ * kBurstSeconds) : 0;
  tokens_ = burst_;
  last_ns_ = now_ns;
}

void TokenBucket::Refill(int64_t now_ns) {
  if (now_ns <= last_ns_) return;
  tokens_ = std::min(burst_, tokens_ + rate_ * static_cast<double>(now_ns - last_ns_) * 1e-9);
  last_ns_ = now_ns;
}

size_t TokenBucket::Available(int64_t now_ns) {
  Refill(now_ns);
  return tokens_ > 0 ? static_cast<size_t>(tokens_) : 0;
}

int64_t TokenBucket::ReadyAt(size_t bytes, int64_t now_ns) {
  Refill(now_ns);
  double need = std::min(static_cast<double>(bytes), burst_) - tokens_;
  if (need <= 0) return now_ns;
  return now_ns + static_cast<int64_t>(std::ceil(need / rate_ * 1e9));
}

}  // namespace strata::linkem
