// A small owned set of threads, each running one task to its end: the hand-off links' background
// work (negotiating, connecting, moving payloads, falling back), which must never block the worker
// or a stream reaction, yet must not outlive what it uses.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace strata::node {

// Starts threads and joins every one of them: a thread whose task has ended is joined by a later
// Start (it is exiting then, so that join does not wait for work), and the destructor joins the
// rest, waiting for their tasks to end. Whoever owns the set therefore destroys it only once every
// task has been told to end (or will end on its own), and after everything the tasks use; a task
// must never destroy its own set. Thread-safe.
class ThreadSet {
 public:
  ThreadSet() = default;
  ThreadSet(const ThreadSet&) = delete;
  ThreadSet& operator=(const ThreadSet&) = delete;
  ~ThreadSet();

  // Runs `task` on a new thread. What the task holds is released before its thread counts as
  // finished.
  void Start(std::function<void()> task);

 private:
  void Finished(uint64_t id);

  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> finished_ ABSL_GUARDED_BY(mu_);  // ids whose task has ended
};

}  // namespace strata::node
