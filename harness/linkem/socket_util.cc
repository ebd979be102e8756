#include "harness/linkem/socket_util.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/strings.h"

namespace strata::linkem {
namespace {

absl::StatusOr<int> BoundSocket(const SocketAddress& address) {
  int fd = socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, address.get(), address.length) != 0) {
    absl::Status status = ErrnoError(StrCat("bind ", FormatAddress(address)));
    close(fd);
    return status;
  }
  return fd;
}

}  // namespace

absl::Status ErrnoError(std::string_view what) {
  int error = errno;
  std::string message = StrCat(what, ": ", std::strerror(error));
  if (error == EADDRINUSE) return absl::FailedPreconditionError(message);
  return absl::UnavailableError(message);
}

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void CloseWithReset(int fd) {
  linger abort{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
  close(fd);
}

absl::StatusOr<int> BindReservedListener(SocketAddress address) {
  int probe = -1;
  if (address.port() == 0) {
    absl::StatusOr<int> bound = BoundSocket(address);
    if (!bound.ok()) return bound.status();
    probe = *bound;
    absl::StatusOr<SocketAddress> chosen = LocalAddress(probe);
    if (!chosen.ok()) {
      close(probe);
      return chosen.status();
    }
    address.set_port(chosen->port());
  }
  // Both sockets carry SO_REUSEADDR and neither listens yet, so the second bind may share the
  // probe's port; the probe is closed before listen().
  absl::StatusOr<int> fd = BoundSocket(address);
  if (probe >= 0) close(probe);
  if (!fd.ok()) return fd.status();
  if (listen(*fd, kListenBacklog) != 0) {
    absl::Status status = ErrnoError("listen");
    close(*fd);
    return status;
  }
  return *fd;
}

}  // namespace strata::linkem
