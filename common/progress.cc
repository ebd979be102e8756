#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

namespace strata {

Progress::Progress(std::string label, uint64_t total)
    : label_(std::move(label)), total_(total ? total : 1), tty_(::isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() { Done(); }

void Progress::Update(uint64_t done) {
  if (!tty_ || finished_) return;
  int percent = static_cast<int>(done * 100 / total_);
  if (percent == last_percent_) return;
  last_percent_ = percent;
  const int width = 30, filled = percent * width / 100;
  std::fprintf(stderr,
               "\r%s [%.*s%*s] %3d%%",
               label_.c_str(),
               filled,
               "##############################",
               width - filled,
               "",
               percent);
  std::fflush(stderr);
}

void Progress::Done() {
  if (finished_) return;
  finished_ = true;
  if (!tty_) return;
  Update(total_);
  std::fprintf(stderr, "\r%s done%*s\n", label_.c_str(), 40, "");
}

}  // namespace strata
