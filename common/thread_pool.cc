#include "common/thread_pool.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace strata {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// About 50-100 µs of spinning: long enough to bridge the gaps between the parallel regions of a
// forward pass, short enough not to steal a core from other processes (e.g. the other nodes of a
// swarm sharing one machine) once the pass is over.
constexpr int kSpinIterations = 2000;

// Direct futex calls: libstdc++ 12's std::atomic::wait can miss wake-ups.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex,
          reinterpret_cast<uint32_t*>(word),
          FUTEX_WAIT_PRIVATE,
          expected,
          nullptr,
          nullptr,
          0);
}

void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex,
          reinterpret_cast<uint32_t*>(word),
          FUTEX_WAKE_PRIVATE,
          INT32_MAX,
          nullptr,
          nullptr,
          0);
}

void FutexWait(std::atomic<int>* word, int expected) {
  syscall(
      SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void FutexWakeAll(std::atomic<int>* word) {
  syscall(
      SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  workers_.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  FutexWakeAll(&generation_);
  for (auto& t : workers_) t.join();
}

int ThreadPool::DefaultThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void ThreadPool::Run(absl::FunctionRef<void(int, int)> fn) {
  if (num_threads_ == 1) {
    fn(0, 1);
    return;
  }
  absl::MutexLock lock(&run_mu_);
  job_ = &fn;
  pending_.store(num_threads_ - 1, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&generation_);
  fn(0, num_threads_);
  int spins = 0;
  int left;
  while ((left = pending_.load(std::memory_order_acquire)) != 0) {
    if (++spins < kSpinIterations) {
      CpuRelax();
      continue;
    }
    // A worker is descheduled: sleep until the last one finishes instead of yielding in a loop.
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    if ((left = pending_.load(std::memory_order_seq_cst)) != 0) FutexWait(&pending_, left);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
  job_ = nullptr;
}

void ThreadPool::ParallelFor(int64_t n,
                             int64_t grain,
                             absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  if (num_threads_ == 1 || units == 1) {
    fn(0, n);
    return;
  }
  Run([&](int index, int count) {
    const int64_t per = units / count, extra = units % count;
    const int64_t first = index * per + std::min<int64_t>(index, extra);
    const int64_t last = first + per + (index < extra ? 1 : 0);
    const int64_t begin = std::min(n, first * grain), end = std::min(n, last * grain);
    if (begin < end) fn(begin, end);
  });
}

void ThreadPool::WorkerLoop(int index) {
  // Generation 0 is the value before any Run: a worker that starts after the first Run began must
  // still take part in it, so do not read the counter here.
  uint32_t seen = 0;
  while (true) {
    int spins = 0;
    uint32_t now;
    while ((now = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        CpuRelax();
      } else {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        FutexWait(&generation_, seen);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
    }
    seen = now;
    if (stop_.load(std::memory_order_acquire)) return;
    (*job_)(index, num_threads_);
    if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_sleeping_.load(std::memory_order_seq_cst)) {
      FutexWakeAll(&pending_);
    }
  }
}

}  // namespace strata
