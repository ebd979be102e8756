// Token bucket that paces one direction of one link. Time is passed in (monotonic nanoseconds),
// so the pacing arithmetic is testable without a clock.
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata::linkem {

class TokenBucket {
 public:
  // Smallest burst: a few segments, so low rates are not paced one byte at a time.
  static constexpr double kMinBurstBytes = 16 * 1024;
  // The burst also covers this many seconds at the configured rate.
  static constexpr double kBurstSeconds = 0.005;

  // `bytes_per_second` 0 means unlimited. The bucket starts (and restarts) full.
  void SetRate(double bytes_per_second, int64_t now_ns);

  bool unlimited() const { return rate_ <= 0; }
  double burst_bytes() const { return burst_; }
  // Bytes worth waiting for before sending again: a quarter of the burst.
  size_t quantum() const { return static_cast<size_t>(burst_ / 4); }

  // Whole bytes that may be sent at `now_ns`.
  size_t Available(int64_t now_ns);
  void Consume(size_t bytes) { tokens_ -= static_cast<double>(bytes); }
  // Earliest time at which min(bytes, burst) bytes are available.
  int64_t ReadyAt(size_t bytes, int64_t now_ns);

 private:
  void Refill(int64_t now_ns);

  double rate_ = 0;    // bytes per second; 0 = unlimited
  double burst_ = 0;   // bucket capacity in bytes
  double tokens_ = 0;  // may not go negative: Consume never exceeds Available
  int64_t last_ns_ = 0;
};

}  // namespace strata::linkem
