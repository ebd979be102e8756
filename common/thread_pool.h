// A small fork-join pool for data-parallel kernels. Workers spin briefly and then sleep on an
// atomic wait, so an idle process costs no CPU while a busy one pays ~1 µs per parallel region.
//
// Work is split statically by thread index; kernels keep every output element's arithmetic inside
// one thread, so results do not depend on the thread count.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

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
  void Run(absl::FunctionRef<void(int, int)> fn) ABSL_LOCKS_EXCLUDED(run_mu_);

  // Splits [0, n) into num_threads contiguous chunks, each a multiple of `grain` (except the last).
  void ParallelFor(int64_t n, int64_t grain, absl::FunctionRef<void(int64_t, int64_t)> fn);

  // Threads to use when a flag says 0: the number of online CPUs.
  static int DefaultThreads();

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  // Set by Run while it holds run_mu_, before it bumps generation_; workers read it, without the
  // lock, after they see the new generation, and Run waits for all of them before clearing it.
  const absl::FunctionRef<void(int, int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};              // workers blocked in a futex wait
  std::atomic<bool> caller_sleeping_{false};  // Run's caller blocked waiting for `pending_`
  std::atomic<bool> stop_{false};
  absl::Mutex run_mu_;  // one Run at a time
};

}  // namespace strata
