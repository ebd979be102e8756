// LinkEmulator: runs `strata-linkem` as a child process for tests and benchmarks, and drives it
// over its control port. From Python, do the same with subprocess + a socket: read the first
// stdout line, connect to `control=`, send `delay 0 20\n`, read `ok\n`.
//
//   auto linkem = LinkEmulator::Start({.binary = BinaryDir() + "/strata-linkem",
//                                      .links = {{.target = server_address}},
//                                      .delay_ms = 20});
//   Connect((*linkem)->listen_address(0));   // instead of server_address
//   ASSERT_OK((*linkem)->Command("cut 0"));
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata {
class Subprocess;
}  // namespace strata

namespace strata::linkem {

struct LinkEmulatorOptions {
  struct Link {
    std::string listen = "127.0.0.1:0";
    std::string target;  // host:port of the real server
  };
  std::string binary;  // path of strata-linkem
  std::vector<Link> links;
  double delay_ms = 0;        // one-way, each direction
  double jitter_ms = 0;       // uniform +/-; never reorders
  double bandwidth_mbit = 0;  // per direction per link; 0 = unlimited
  uint64_t seed = 1;
  absl::Duration start_timeout = absl::Seconds(10);  // until the ready line
  absl::Duration command_timeout = absl::Seconds(10);
};

class LinkEmulator {
 public:
  // Spawns the binary and waits for its ready line.
  static absl::StatusOr<std::unique_ptr<LinkEmulator>> Start(const LinkEmulatorOptions& options);
  // SIGTERM, then SIGKILL if the child has not exited within 2 s.
  ~LinkEmulator();
  LinkEmulator(const LinkEmulator&) = delete;
  LinkEmulator& operator=(const LinkEmulator&) = delete;

  int num_links() const { return static_cast<int>(listen_addresses_.size()); }
  // "127.0.0.1:PORT": where clients connect instead of the target.
  const std::string& listen_address(int link) const { return listen_addresses_[link]; }
  int listen_port(int link) const;
  const std::string& control_address() const { return control_address_; }
  const std::string& ready_line() const { return ready_line_; }
  pid_t pid() const { return pid_; }

  // Sends one control line (e.g. "delay 0 20 2", "cut all"). `ok` -> OK; `error why` ->
  // INVALID_ARGUMENT(why); transport failures -> UNAVAILABLE.
  absl::Status Command(std::string_view line);
  // Like Command, returning what follows `ok` (e.g. for "stats").
  absl::StatusOr<std::string> Query(std::string_view line);
  // Parsed `stats`: counter `key` (e.g. "c2s_bytes", "conns", "s2c_dropped") of `link`.
  absl::StatusOr<double> Stat(int link, std::string_view key);

 private:
  LinkEmulator() = default;
  absl::Status ReadReadyLine(absl::Duration timeout);
  absl::Status ConnectControl() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::unique_ptr<Subprocess> process_;
  pid_t pid_ = -1;
  absl::Duration command_timeout_;
  std::string ready_line_;
  std::string control_address_;
  std::vector<std::string> listen_addresses_;
  absl::Mutex mu_;
  int control_fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::string control_buffer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::linkem
