// Child processes for `strata demo`, benchmarks and multi-process tests: start a command with its
// stdout on a pipe, read its lines with a deadline, stop it (SIGTERM, then SIGKILL).
// Children are started in their own process group and receive SIGTERM if the parent dies, so a
// killed parent leaves no orphans.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata {

class Subprocess {
 public:
  // Starts argv[0] with the arguments. stderr goes to `stderr_path` (empty: inherited;
  // "/dev/null" to discard).
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                           const std::string& stderr_path = "");
  ~Subprocess();  // Stop()s the child if it still runs

  // The next line of the child's stdout (without the newline); DEADLINE_EXCEEDED after
  // `timeout`, UNAVAILABLE when stdout closes first.
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);

  // Sends `signal` to the child.
  void Signal(int signal);
  // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status (as from waitpid).
  int Stop(absl::Duration grace = absl::Seconds(5));
  // Waits for the child to exit on its own; -1 on timeout.
  int Wait(absl::Duration timeout);
  bool running();
  pid_t pid() const { return pid_; }

 private:
  Subprocess() = default;
  static absl::StatusOr<std::unique_ptr<Subprocess>> StartHere(const std::vector<std::string>& argv,
                                                               const std::string& stderr_path);
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  bool exited_ = false;
  int status_ = 0;
};

}  // namespace strata
