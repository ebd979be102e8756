// A process-wide cache of gRPC channels by address, so every session to the same peer shares one
// HTTP/2 connection.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace strata::transport {

class ChannelCache {
 public:
  std::shared_ptr<grpc::Channel> Get(const std::string& address);
  // Drops a cached channel (e.g. after the peer failed) so the next Get reconnects afresh.
  void Forget(const std::string& address);

  static ChannelCache& Default();

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::transport
