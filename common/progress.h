// A one-line progress indicator on stderr, drawn only when stderr is a terminal.
#pragma once

#include <cstdint>
#include <string>

namespace strata {

class Progress {
 public:
  Progress(std::string label, uint64_t total);
  ~Progress();  // finishes the line
  void Update(uint64_t done);
  void Done();

 private:
  std::string label_;
  uint64_t total_;
  int last_percent_ = -1;
  bool tty_;
  bool finished_ = false;
};

}  // namespace strata
