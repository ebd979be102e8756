#include "node/thread_set.h"

#include <utility>

namespace strata::node {

ThreadSet::~ThreadSet() {
  std::map<uint64_t, std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    threads.swap(threads_);
  }
  // Outside the lock: a task that ends takes it to report so.
  for (auto& [id, thread] : threads) thread.join();
}

void ThreadSet::Start(std::function<void()> task) {
  std::vector<std::thread> done;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : finished_) {
      auto it = threads_.find(id);
      if (it == threads_.end()) continue;
      done.push_back(std::move(it->second));
      threads_.erase(it);
    }
    finished_.clear();
    const uint64_t id = next_id_++;
    // The thread reports its end under mu_, so never before it is in threads_.
    threads_.emplace(id, std::thread([this, id, task = std::move(task)]() mutable {
                       task();
                       task = nullptr;
                       Finished(id);
                     }));
  }
  for (std::thread& t : done) t.join();
}

void ThreadSet::Finished(uint64_t id) {
  absl::MutexLock lock(&mu_);
  finished_.push_back(id);
}

}  // namespace strata::node
