// What a node knows about its hand-off links as a whole: the board of its push streams to next
// hops (for the status line, metrics and Info) and the budget that caps its hand-off links.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "strata/v1/node.pb.h"

namespace strata::node {

// What each push stream to a next hop uses, for the status line, metrics and Info. Thread-safe.
class LinkBoard {
 public:
  uint64_t Add(v1::DownstreamLinkInfo info);
  void Update(uint64_t key, const std::string& transport, const std::string& reason);
  void SetSession(uint64_t key, const std::string& session_id);
  void CountPayload(uint64_t key);  // one more payload sent on the link
  void Remove(uint64_t key);
  std::vector<v1::DownstreamLinkInfo> Snapshot() const;
  // Open links by transport, e.g. {"grpc": 2, "nccl": 1}.
  std::map<std::string, int> Counts() const;
  // "links nccl 1, grpc 2" (empty when no link is open).
  std::string Summary() const;

 private:
  mutable absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, v1::DownstreamLinkInfo> links_ ABSL_GUARDED_BY(mu_);
};

// Caps the hand-off links of one node (each holds a communicator and device buffers), shared by
// its outgoing and incoming streams. Thread-safe.
class LinkBudget {
 public:
  explicit LinkBudget(int limit) : limit_(limit) {}
  // False when `limit` links are open already.
  bool TryTake() {
    int n = open_.load();
    while (n < limit_) {
      if (open_.compare_exchange_weak(n, n + 1)) return true;
    }
    return false;
  }
  void Give() { open_.fetch_sub(1); }
  int limit() const { return limit_; }
  int open() const { return open_.load(); }

 private:
  const int limit_;
  std::atomic<int> open_{0};
};

}  // namespace strata::node
