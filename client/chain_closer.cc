#include "client/chain_closer.h"

#include "client/remote_chain.h"

namespace strata::client {

ChainCloser::ChainCloser() : thread_([this] { Loop(); }) {}

ChainCloser::~ChainCloser() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void ChainCloser::Close(std::unique_ptr<RemoteChain> chain) {
  if (chain == nullptr) return;
  chain->EndWrites();
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(chain));
}

void ChainCloser::Loop() {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
  while (true) {
    mu_.Await(absl::Condition(&ready));
    if (queue_.empty()) return;  // stopping, nothing left
    std::vector<std::unique_ptr<RemoteChain>> chains;
    chains.swap(queue_);
    mu_.Unlock();
    for (auto& c : chains) c->Close();
    chains.clear();
    mu_.Lock();
  }
}

}  // namespace strata::client
