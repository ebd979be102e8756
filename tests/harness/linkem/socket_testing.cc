#include "tests/harness/linkem/socket_testing.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <random>

#include "absl/time/clock.h"
#include "common/strings.h"
#include "harness/linkem/address.h"

namespace strata::linkem {

EchoServer::EchoServer() {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  listen(listen_fd_, 128);
  address_ = FormatAddress(*LocalAddress(listen_fd_));
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

EchoServer::~EchoServer() {
  shutdown(listen_fd_, SHUT_RDWR);  // accept() fails with EINVAL
  acceptor_.join();
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  absl::MutexLock lock(&mu_);
  for (int fd : fds_) close(fd);
  close(listen_fd_);
}

void EchoServer::AcceptLoop() {
  while (true) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    absl::MutexLock lock(&mu_);
    fds_.push_back(fd);
    threads_.emplace_back([this, fd] { Echo(fd); });
  }
}

void EchoServer::Echo(int fd) {
  char buffer[65536];
  while (true) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    bytes_received_ += n;
    if (!SendAll(fd, std::string(buffer, n))) break;
  }
  shutdown(fd, SHUT_WR);
}

int ConnectTo(const std::string& address) {
  absl::StatusOr<HostPort> hp = ParseHostPort(address);
  if (!hp.ok()) return -1;
  absl::StatusOr<SocketAddress> addr = Resolve(*hp, /*passive=*/false);
  if (!addr.ok()) return -1;
  int fd = socket(addr->family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, addr->get(), addr->length) != 0) {
    int error = errno;
    close(fd);
    errno = error;
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += n;
  }
  return true;
}

namespace {

ReadEnd RecvUpTo(int fd, size_t n, absl::Time deadline, std::string* out) {
  char buffer[65536];
  while (out->size() < n) {
    pollfd p{fd, POLLIN, 0};
    int ms =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    int ready = poll(&p, 1, ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return ReadEnd::kTimeout;
    ssize_t got = recv(fd, buffer, std::min(sizeof(buffer), n - out->size()), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got == 0) return ReadEnd::kEof;
    if (got < 0) return ReadEnd::kReset;
    out->append(buffer, got);
  }
  return ReadEnd::kData;
}

}  // namespace

ReadEnd RecvExactly(int fd, size_t n, absl::Time deadline, std::string* out) {
  out->clear();
  return RecvUpTo(fd, n, deadline, out);
}

ReadEnd RecvToEnd(int fd, absl::Time deadline, std::string* out) {
  out->clear();
  return RecvUpTo(fd, SIZE_MAX, deadline, out);
}

std::string EchoThrough(const std::string& address,
                        const std::string& payload,
                        absl::Time deadline) {
  int fd = ConnectTo(address);
  if (fd < 0) return "connect failed";
  std::thread writer([&] {
    SendAll(fd, payload);
    shutdown(fd, SHUT_WR);
  });
  std::string echoed;
  ReadEnd end = RecvToEnd(fd, deadline, &echoed);
  if (end != ReadEnd::kEof) shutdown(fd, SHUT_RDWR);  // unblock the writer
  writer.join();
  close(fd);
  return end == ReadEnd::kEof ? echoed : StrCat("read ended ", static_cast<int>(end));
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

}  // namespace strata::linkem
