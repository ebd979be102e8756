#include "transport/channels.h"

#include "common/grpc_util.h"

namespace strata::transport {

std::shared_ptr<grpc::Channel> ChannelCache::Get(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  auto channel = grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), DefaultChannelArguments());
  channels_[address] = channel;
  return channel;
}

void ChannelCache::Forget(const std::string& address) {
  absl::MutexLock lock(&mu_);
  channels_.erase(address);
}

ChannelCache& ChannelCache::Default() {
  static ChannelCache* cache = new ChannelCache();
  return *cache;
}

}  // namespace strata::transport
