// The link emulator: a single-threaded epoll TCP proxy that adds delay, jitter, a bandwidth cap
// and faults (cut, blackhole) between hops, since this kernel has no netem.
//
// Every chunk read from a socket is released to the other side after the link's one-way delay
// (± uniform jitter), never before an earlier chunk of the same direction, and then paced by the
// link's token bucket. FIN and RST travel through the same queue, so half-close is preserved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "harness/linkem/command.h"
#include "harness/linkem/link_state.h"

namespace strata::linkem {

struct LinkSpec {
  std::string listen;  // host:port to listen on (port 0: any free port)
  std::string target;  // host:port to forward to
};

struct ProxyOptions {
  std::vector<LinkSpec> links;
  std::string control = "127.0.0.1:0";  // control port; empty: none
  bool control_on_stdin = true;         // also read commands from stdin, answer on stdout
  double delay_ms = 0;                  // initial shaping of every link
  double jitter_ms = 0;
  double bandwidth_mbit = 0;         // 0 = unlimited
  uint64_t seed = 1;                 // jitter RNG
  size_t max_queue_bytes = 8 << 20;  // per direction; reading the source pauses above this
};

class Proxy {
 public:
  // Binds every listener and the control port.
  static absl::StatusOr<std::unique_ptr<Proxy>> Create(const ProxyOptions& options);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // `linkem ready control=HOST:PORT links=LISTEN->TARGET,...` (control=none without one).
  std::string ReadyLine() const;

  // Serves until `quit`, SIGINT or SIGTERM (blocked in the calling thread and read by signalfd).
  absl::Status Run();

  // Runs one control line; returns the reply without newline.
  std::string Execute(std::string_view line);

 private:
  struct ControlClient {
    int fd = -1;
    std::string in, out;
    bool writable = true;
    bool peer_done = false;
  };
  struct Wake {
    int64_t at_ns;
    uint64_t conn;
    int direction;
    bool operator>(const Wake& o) const { return at_ns > o.at_ns; }
  };

  explicit Proxy(const ProxyOptions& options);
  absl::Status Init();
  absl::Status AddFd(int fd, uint32_t events, uint64_t tag);
  void Dispatch(uint64_t tag, uint32_t events);
  void RunDueWakes();
  void ArmTimer();

  // proxy.cc: accepting and control.
  void OnListener(Link& link);
  void StartConn(Link& link, int client_fd);
  void OnControlListener();
  void OnControlClient(uint64_t id);
  void FlushControl(ControlClient& client);
  void OnStdin();
  std::string StatsText() const;

  // forwarding.cc: moving bytes.
  void OnSide(Conn& conn, int side, uint32_t events);
  void Drive(Conn& conn);
  bool CanRead(const Conn& conn, int d) const;
  void ReadInto(Conn& conn, int d, size_t& budget);
  bool Pump(Conn& conn, int d, size_t& budget);
  void Enqueue(Conn& conn, int d, Chunk chunk);
  void QueueEndIfDue(Conn& conn, int d);
  void ScheduleWake(Conn& conn, int d, int64_t at_ns);
  void Abort(Conn& conn);
  void CloseGracefully(Conn& conn);
  int64_t DelayNs(const Link& link);
  absl::Status SetMode(Link& link, LinkMode mode);
  void SetBandwidth(Link& link, double mbit);
  Conn* FindConn(uint64_t id);

  ProxyOptions options_;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int signal_fd_ = -1;
  int control_fd_ = -1;
  bool stdin_open_ = false;
  std::string stdin_buffer_;
  std::string control_address_ = "none";
  std::vector<Link> links_;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::map<uint64_t, ControlClient> control_clients_;
  uint64_t next_id_ = 1;
  std::priority_queue<Wake, std::vector<Wake>, std::greater<Wake>> wakes_;
  int64_t armed_ns_ = kNever;
  std::vector<uint64_t> ready_;  // connections with work left over after their budget
  std::vector<uint64_t> dead_;   // closed connections to erase at the end of the loop turn
  std::mt19937_64 rng_;
  std::vector<char> read_buffer_;
  bool quit_ = false;
};

// Monotonic clock in nanoseconds (CLOCK_MONOTONIC, the timerfd's clock).
int64_t MonotonicNowNs();

}  // namespace strata::linkem
