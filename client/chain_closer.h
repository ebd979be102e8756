// Closing remote chains in the background.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace strata::client {

class RemoteChain;

// Closes chains on a thread of its own: a request returns as soon as its last token is known,
// rather than after every hop has acknowledged the end of its stream.
class ChainCloser {
 public:
  ChainCloser();
  ~ChainCloser();  // closes the chains still queued

  // Half-closes `chain` now (its hops free the session as soon as the message arrives) and
  // waits for the hops' acknowledgements in the background.
  void Close(std::unique_ptr<RemoteChain> chain);

 private:
  void Loop();

  absl::Mutex mu_;
  std::vector<std::unique_ptr<RemoteChain>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace strata::client
