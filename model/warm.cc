#include "model/warm.h"

#include <unistd.h>

namespace strata::model {

uint64_t TouchPages(std::span<const kernels::Tensor> tensors,
                    const std::function<void(uint64_t, uint64_t)>& progress) {
  uint64_t total = 0, done = 0;
  for (const kernels::Tensor& t : tensors) total += t.bytes();
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  volatile uint8_t sink = 0;
  uint64_t next_report = 0;
  for (const kernels::Tensor& t : tensors) {
    const uint8_t* p = static_cast<const uint8_t*>(t.data);
    const size_t bytes = t.bytes();
    for (size_t off = 0; off < bytes; off += page) {
      sink = sink + p[off];
      if (progress && done + off >= next_report) {
        progress(done + off, total);
        next_report = done + off + (total / 100 + 1);
      }
    }
    done += bytes;
  }
  if (progress) progress(total, total);
  (void)sink;
  return total;
}

}  // namespace strata::model
