// Blocking loopback sockets for the link emulator tests: a threaded echo server and client
// helpers that wait with deadlines (poll), never with sleeps.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::linkem {

// Echoes every connection until EOF, then half-closes; one thread per connection.
class EchoServer {
 public:
  EchoServer();  // listens on 127.0.0.1:0
  ~EchoServer();
  std::string address() const { return address_; }
  int64_t bytes_received() const { return bytes_received_.load(); }

 private:
  void AcceptLoop();
  void Echo(int fd);

  int listen_fd_ = -1;
  std::string address_;
  std::atomic<int64_t> bytes_received_{0};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<int> fds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

// A connected client socket (blocking, TCP_NODELAY), or -1 with errno set.
int ConnectTo(const std::string& address);

bool SendAll(int fd, const std::string& data);

// How a read ended.
enum class ReadEnd { kData, kEof, kReset, kTimeout };

// Reads exactly `n` bytes unless EOF, reset or the deadline comes first.
ReadEnd RecvExactly(int fd, size_t n, absl::Time deadline, std::string* out);
// Reads until EOF, reset or the deadline.
ReadEnd RecvToEnd(int fd, absl::Time deadline, std::string* out);

// Sends `payload` from a second thread, then half-closes, while reading the echo to EOF.
// Returns what came back.
std::string EchoThrough(const std::string& address,
                        const std::string& payload,
                        absl::Time deadline);

std::string RandomBytes(size_t n, uint64_t seed);

}  // namespace strata::linkem
