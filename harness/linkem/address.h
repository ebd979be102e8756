// Host:port parsing and socket-address helpers for the link emulator.
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata::linkem {

// A textual endpoint: "127.0.0.1:80", "localhost:80" or "[::1]:80" (brackets stripped in `host`).
struct HostPort {
  std::string host;
  int port = 0;  // 0..65535; 0 asks the kernel for a free port when listening
};

absl::StatusOr<HostPort> ParseHostPort(std::string_view text);

// A resolved socket address (IPv4 or IPv6).
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
  int port() const;
  void set_port(int port);
};

// Resolves `hp` (numeric or through getaddrinfo; blocking, so only at startup). `passive` picks
// addresses suitable for bind().
absl::StatusOr<SocketAddress> Resolve(const HostPort& hp, bool passive);

// The address a socket is bound to (getsockname).
absl::StatusOr<SocketAddress> LocalAddress(int fd);

// Numeric form: "127.0.0.1:80" or "[::1]:80".
std::string FormatAddress(const SocketAddress& address);

}  // namespace strata::linkem
