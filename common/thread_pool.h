// A small fork-join pool for data-parallel kernels. Workers spin briefly and then sleep on an
// atomic wait, so an idle process costs no CPU while a busy one pays ~1 µs per parallel region.
//
// Work is split statically by thread index; kernels keep every output element's arithmetic inside
// one thread, so results do not depend on the thread count.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace strata {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread; 1 means everything runs inline.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs fn(thread_index, num_threads) once on every thread (the caller is index 0) and returns
  // when all have finished. Calls from several threads are serialized; a call from inside `fn`
  // would deadlock.
  void Run(absl::FunctionRef<void(int, int)> fn);

  // Splits [0, n) into num_threads contiguous chunks, each a multiple of `grain` (except the last).
  void ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn);

  // Threads to use when a flag says 0: the number of online CPUs.
  static int DefaultThreads();

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  const absl::FunctionRef<void(int, int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};  // workers blocked in a futex wait
  std::atomic<bool> caller_sleeping_{false};  // Run's caller blocked waiting for `pending_`
  std::atomic<bool> stop_{false};
  std::mutex run_mu_;  // one Run at a time
};

}  // namespace strata
