#include "harness/linkem/linkem_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include "absl/time/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "common/subprocess.h"
#include "harness/linkem/address.h"
#include "harness/linkem/socket_util.h"

namespace strata::linkem {
namespace {

std::vector<std::string> SplitBy(std::string_view text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(separator, start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) parts.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LinkEmulator>> LinkEmulator::Start(
    const LinkEmulatorOptions& options) {
  if (options.links.empty()) return absl::InvalidArgumentError("LinkEmulator: no links");
  std::vector<std::string> args = {options.binary,
                                   "--no-stdin",
                                   "--control",
                                   "127.0.0.1:0",
                                   "--delay-ms",
                                   StrCat(options.delay_ms),
                                   "--jitter-ms",
                                   StrCat(options.jitter_ms),
                                   "--bandwidth-mbit",
                                   StrCat(options.bandwidth_mbit),
                                   "--seed",
                                   StrCat(options.seed)};
  for (const LinkEmulatorOptions::Link& link : options.links) {
    args.push_back("--link");
    args.push_back(StrCat(link.listen, "=", link.target));
  }
  std::unique_ptr<LinkEmulator> linkem(new LinkEmulator());
  ASSIGN_OR_RETURN(linkem->process_, Subprocess::Start(args));
  linkem->pid_ = linkem->process_->pid();
  linkem->command_timeout_ = options.command_timeout;
  RETURN_IF_ERROR(linkem->ReadReadyLine(options.start_timeout));
  if (linkem->num_links() != static_cast<int>(options.links.size())) {
    return absl::InternalError(StrCat("unexpected ready line: ", linkem->ready_line_));
  }
  return linkem;
}

absl::Status LinkEmulator::ReadReadyLine(absl::Duration timeout) {
  auto read = process_->ReadLine(timeout);
  if (!read.ok()) {
    return absl::Status(read.status().code(),
                        StrCat("strata-linkem: no ready line: ", read.status().message()));
  }
  const std::string line = *read;
  ready_line_ = line;
  std::vector<std::string> words = SplitBy(line, ' ');
  if (words.size() != 4 || words[0] != "linkem" || words[1] != "ready" ||
      words[2].rfind("control=", 0) != 0 || words[3].rfind("links=", 0) != 0) {
    return absl::InternalError(StrCat("unexpected ready line: ", line));
  }
  control_address_ = words[2].substr(8);
  for (const std::string& link : SplitBy(std::string_view(words[3]).substr(6), ',')) {
    size_t arrow = link.find("->");
    if (arrow == std::string::npos) return absl::InternalError(StrCat("bad link in: ", line));
    listen_addresses_.push_back(link.substr(0, arrow));
  }
  return absl::OkStatus();
}

LinkEmulator::~LinkEmulator() {
  {
    absl::MutexLock lock(&mu_);
    if (control_fd_ >= 0) close(control_fd_);
    control_fd_ = -1;
  }
  if (process_) process_->Stop(absl::Seconds(2));
}

int LinkEmulator::listen_port(int link) const {
  absl::StatusOr<HostPort> hp = ParseHostPort(listen_addresses_[link]);
  return hp.ok() ? hp->port : -1;
}

absl::Status LinkEmulator::ConnectControl() {
  ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(control_address_));
  ASSIGN_OR_RETURN(SocketAddress address, Resolve(hp, /*passive=*/false));
  int fd = socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoError("socket");
  timeval tv = absl::ToTimeval(command_timeout_);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, address.get(), address.length) != 0) {
    absl::Status status = ErrnoError(StrCat("connect control ", control_address_));
    close(fd);
    return status;
  }
  SetNoDelay(fd);
  control_fd_ = fd;
  control_buffer_.clear();
  return absl::OkStatus();
}

absl::StatusOr<std::string> LinkEmulator::Query(std::string_view line) {
  absl::MutexLock lock(&mu_);
  if (control_fd_ < 0) RETURN_IF_ERROR(ConnectControl());
  std::string request = StrCat(line, "\n");
  auto fail = [&](std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Status status = ErrnoError(StrCat("linkem control ", what));
    close(control_fd_);
    control_fd_ = -1;
    return status;
  };
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(control_fd_, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("send");
    sent += n;
  }
  size_t newline;
  while ((newline = control_buffer_.find('\n')) == std::string::npos) {
    char buffer[4096];
    ssize_t n = recv(control_fd_, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = ECONNRESET;
    if (n <= 0) return fail("recv");
    control_buffer_.append(buffer, n);
  }
  std::string reply = control_buffer_.substr(0, newline);
  control_buffer_.erase(0, newline + 1);
  if (reply == "ok") return std::string();
  if (reply.rfind("ok ", 0) == 0) return reply.substr(3);
  if (reply.rfind("error ", 0) == 0) return absl::InvalidArgumentError(reply.substr(6));
  return absl::InternalError(StrCat("unexpected linkem reply: ", reply));
}

absl::Status LinkEmulator::Command(std::string_view line) { return Query(line).status(); }

absl::StatusOr<double> LinkEmulator::Stat(int link, std::string_view key) {
  ASSIGN_OR_RETURN(std::string stats, Query("stats"));
  std::string prefix = StrCat(link, ":");
  for (const std::string& token : SplitBy(stats, ' ')) {
    if (token.rfind(prefix, 0) != 0) continue;
    for (const std::string& pair : SplitBy(std::string_view(token).substr(prefix.size()), ',')) {
      size_t eq = pair.find('=');
      if (eq == std::string::npos || std::string_view(pair).substr(0, eq) != key) continue;
      double value = 0;
      auto [end, ec] = std::from_chars(pair.data() + eq + 1, pair.data() + pair.size(), value);
      if (ec != std::errc()) break;
      return value;
    }
  }
  return absl::NotFoundError(StrCat("no stat ", key, " for link ", link));
}

}  // namespace strata::linkem
