#include "harness/linkem/proxy.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "harness/linkem/socket_util.h"

namespace strata::linkem {
namespace {

// epoll tags: the kind in the top byte, an id (link index, connection or client id) below.
enum TagKind : uint64_t {
  kTimerTag = 1,
  kSignalTag,
  kStdinTag,
  kControlListenerTag,
  kControlClientTag,
  kListenerTag,
  kClientSideTag,
  kUpstreamSideTag,
};
constexpr int kTagShift = 56;
constexpr uint64_t kIdMask = (uint64_t{1} << kTagShift) - 1;

uint64_t Tag(TagKind kind, uint64_t id) { return (uint64_t{kind} << kTagShift) | id; }

constexpr size_t kReadBufferBytes = 64 * 1024;
constexpr size_t kMaxControlLine = 4096;
constexpr uint32_t kEdgeEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

const char* ModeName(LinkMode mode) {
  switch (mode) {
    case LinkMode::kNormal:
      return "normal";
    case LinkMode::kCut:
      return "cut";
    case LinkMode::kBlackhole:
      return "blackhole";
  }
  return "?";
}

}  // namespace

int64_t MonotonicNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

Proxy::Proxy(const ProxyOptions& options)
    : options_(options), rng_(options.seed), read_buffer_(kReadBufferBytes) {}

absl::StatusOr<std::unique_ptr<Proxy>> Proxy::Create(const ProxyOptions& options) {
  if (options.links.empty()) return absl::InvalidArgumentError("no --link given");
  std::unique_ptr<Proxy> proxy(new Proxy(options));
  RETURN_IF_ERROR(proxy->Init());
  return proxy;
}

absl::Status Proxy::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (epoll_fd_ < 0 || timer_fd_ < 0) return ErrnoError("epoll/timerfd");
  RETURN_IF_ERROR(AddFd(timer_fd_, EPOLLIN, Tag(kTimerTag, 0)));
  int64_t now = MonotonicNowNs();
  for (const LinkSpec& spec : options_.links) {
    Link& link = links_.emplace_back();
    link.index = static_cast<int>(links_.size()) - 1;
    ASSIGN_OR_RETURN(HostPort listen, ParseHostPort(spec.listen));
    ASSIGN_OR_RETURN(HostPort target, ParseHostPort(spec.target));
    if (target.port == 0) return absl::InvalidArgumentError("target port 0");
    ASSIGN_OR_RETURN(link.target_address, Resolve(target, /*passive=*/false));
    ASSIGN_OR_RETURN(SocketAddress listen_address, Resolve(listen, /*passive=*/true));
    ASSIGN_OR_RETURN(link.listen_fd, BindReservedListener(listen_address));
    ASSIGN_OR_RETURN(link.listen_address, LocalAddress(link.listen_fd));
    RETURN_IF_ERROR(AddFd(link.listen_fd, EPOLLIN | EPOLLET, Tag(kListenerTag, link.index)));
    link.delay_ms = options_.delay_ms;
    link.jitter_ms = options_.jitter_ms;
    link.bandwidth_mbit = options_.bandwidth_mbit;
    for (TokenBucket& bucket : link.bucket) bucket.SetRate(options_.bandwidth_mbit * 125000, now);
  }
  if (!options_.control.empty()) {
    ASSIGN_OR_RETURN(HostPort control, ParseHostPort(options_.control));
    ASSIGN_OR_RETURN(SocketAddress control_address, Resolve(control, /*passive=*/true));
    ASSIGN_OR_RETURN(control_fd_, BindReservedListener(control_address));
    ASSIGN_OR_RETURN(control_address, LocalAddress(control_fd_));
    control_address_ = FormatAddress(control_address);
    RETURN_IF_ERROR(AddFd(control_fd_, EPOLLIN | EPOLLET, Tag(kControlListenerTag, 0)));
  }
  // stdin may be a file or /dev/null, which epoll refuses; then there is simply no stdin control.
  stdin_open_ = options_.control_on_stdin && AddFd(STDIN_FILENO, EPOLLIN, Tag(kStdinTag, 0)).ok();
  return absl::OkStatus();
}

Proxy::~Proxy() {
  for (auto& [id, conn] : conns_) {
    for (Side& side : conn->side) {
      if (side.fd >= 0) close(side.fd);
    }
  }
  for (auto& [id, client] : control_clients_) close(client.fd);
  for (Link& link : links_) {
    if (link.listen_fd >= 0) close(link.listen_fd);
  }
  for (int fd : {control_fd_, signal_fd_, timer_fd_, epoll_fd_}) {
    if (fd >= 0) close(fd);
  }
}

std::string Proxy::ReadyLine() const {
  std::string line = StrCat("linkem ready control=", control_address_, " links=");
  for (const Link& link : links_) {
    if (link.index > 0) line += ',';
    line += StrCat(FormatAddress(link.listen_address), "->", FormatAddress(link.target_address));
  }
  return line;
}

absl::Status Proxy::AddFd(int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) return ErrnoError("epoll_ctl");
  return absl::OkStatus();
}

absl::Status Proxy::Run() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal_fd_ = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd_ < 0) return ErrnoError("signalfd");
  RETURN_IF_ERROR(AddFd(signal_fd_, EPOLLIN, Tag(kSignalTag, 0)));

  epoll_event events[64];
  while (!quit_) {
    ArmTimer();
    int n = epoll_wait(epoll_fd_, events, 64, ready_.empty() ? -1 : 0);
    if (n < 0 && errno != EINTR) return ErrnoError("epoll_wait");
    for (int i = 0; i < n; ++i) Dispatch(events[i].data.u64, events[i].events);
    std::vector<uint64_t> ready;
    ready.swap(ready_);
    for (uint64_t id : ready) {
      if (Conn* conn = FindConn(id)) Drive(*conn);
    }
    RunDueWakes();
    for (uint64_t id : dead_) conns_.erase(id);
    dead_.clear();
  }
  return absl::OkStatus();
}

void Proxy::Dispatch(uint64_t tag, uint32_t events) {
  uint64_t id = tag & kIdMask;
  switch (static_cast<TagKind>(tag >> kTagShift)) {
    case kTimerTag: {
      uint64_t expirations;
      while (read(timer_fd_, &expirations, sizeof(expirations)) > 0) {
      }
      armed_ns_ = kNever;
      break;
    }
    case kSignalTag: {
      signalfd_siginfo info;
      while (read(signal_fd_, &info, sizeof(info)) > 0) quit_ = true;
      break;
    }
    case kStdinTag:
      OnStdin();
      break;
    case kControlListenerTag:
      OnControlListener();
      break;
    case kControlClientTag:
      OnControlClient(id);
      break;
    case kListenerTag:
      OnListener(links_[id]);
      break;
    case kClientSideTag:
    case kUpstreamSideTag:
      if (Conn* conn = FindConn(id)) {
        OnSide(*conn, (tag >> kTagShift) == kClientSideTag ? kClientSide : kUpstreamSide, events);
      }
      break;
  }
}

void Proxy::RunDueWakes() {
  int64_t now = MonotonicNowNs();
  while (!wakes_.empty() && wakes_.top().at_ns <= now) {
    Wake wake = wakes_.top();
    wakes_.pop();
    Conn* conn = FindConn(wake.conn);
    if (conn == nullptr) continue;
    Pipe& pipe = conn->pipe[wake.direction];
    if (pipe.wake_ns == wake.at_ns) pipe.wake_ns = kNever;
    Drive(*conn);
  }
}

void Proxy::ArmTimer() {
  while (!wakes_.empty() && FindConn(wakes_.top().conn) == nullptr) wakes_.pop();
  if (wakes_.empty() || wakes_.top().at_ns == armed_ns_) return;
  armed_ns_ = wakes_.top().at_ns;
  itimerspec spec{};
  spec.it_value.tv_sec = armed_ns_ / 1'000'000'000;
  spec.it_value.tv_nsec = armed_ns_ % 1'000'000'000;
  timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &spec, nullptr);
}

Conn* Proxy::FindConn(uint64_t id) {
  auto it = conns_.find(id);
  return it == conns_.end() || it->second->dead ? nullptr : it->second.get();
}

void Proxy::OnListener(Link& link) {
  while (true) {
    int fd = accept4(link.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // EAGAIN: drained. EINVAL: shut down by `cut`. Others (EMFILE): retried on the next edge.
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINVAL) {
        STRATA_LOG(Warning) << "link " << link.index << ": accept: " << std::strerror(errno);
      }
      return;
    }
    if (link.mode == LinkMode::kCut) {
      ++link.refused;
      CloseWithReset(fd);
      continue;
    }
    StartConn(link, fd);
  }
}

void Proxy::StartConn(Link& link, int client_fd) {
  ++link.accepted;
  SetNoDelay(client_fd);
  int upstream_fd =
      socket(link.target_address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int rc = -1;
  if (upstream_fd >= 0) {
    SetNoDelay(upstream_fd);
    rc = connect(upstream_fd, link.target_address.get(), link.target_address.length);
  }
  if (upstream_fd < 0 || (rc != 0 && errno != EINPROGRESS)) {
    STRATA_LOG(Debug) << "link " << link.index << ": connect: " << std::strerror(errno);
    ++link.connect_failed;
    CloseWithReset(client_fd);
    if (upstream_fd >= 0) close(upstream_fd);
    return;
  }
  auto conn = std::make_unique<Conn>();
  conn->id = next_id_++;
  conn->link = link.index;
  conn->side[kClientSide].fd = client_fd;
  conn->side[kUpstreamSide].fd = upstream_fd;
  conn->connecting = rc != 0;
  conn->side[kUpstreamSide].writable = !conn->connecting;
  for (Pipe& pipe : conn->pipe) pipe.last_release_ns = MonotonicNowNs();
  if (!AddFd(client_fd, kEdgeEvents, Tag(kClientSideTag, conn->id)).ok() ||
      !AddFd(upstream_fd, kEdgeEvents, Tag(kUpstreamSideTag, conn->id)).ok()) {
    CloseWithReset(client_fd);
    close(upstream_fd);
    return;
  }
  link.conns.insert(conn->id);
  conns_.emplace(conn->id, std::move(conn));
}

void Proxy::OnControlListener() {
  while (true) {
    int fd = accept4(control_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    SetNoDelay(fd);
    uint64_t id = next_id_++;
    if (!AddFd(fd, kEdgeEvents, Tag(kControlClientTag, id)).ok()) {
      close(fd);
      continue;
    }
    control_clients_[id].fd = fd;
  }
}

void Proxy::OnControlClient(uint64_t id) {
  auto it = control_clients_.find(id);
  if (it == control_clients_.end()) return;
  ControlClient& client = it->second;
  client.writable = true;
  while (!client.peer_done) {
    ssize_t n = recv(client.fd, read_buffer_.data(), read_buffer_.size(), 0);
    if (n > 0) {
      client.in.append(read_buffer_.data(), n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) client.peer_done = true;
      break;
    }
  }
  size_t newline;
  while ((newline = client.in.find('\n')) != std::string::npos) {
    std::string line = client.in.substr(0, newline);
    client.in.erase(0, newline + 1);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    client.out += Execute(line) + "\n";
  }
  if (client.in.size() > kMaxControlLine) {
    client.out += "error line too long\n";
    client.in.clear();
    client.peer_done = true;
  }
  FlushControl(client);
  if (client.peer_done && (client.out.empty() || !client.writable)) {
    close(client.fd);
    control_clients_.erase(it);
  }
}

void Proxy::FlushControl(ControlClient& client) {
  while (!client.out.empty() && client.writable) {
    ssize_t n = send(client.fd, client.out.data(), client.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      client.out.erase(0, n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      client.writable = false;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) client.peer_done = true;
    }
  }
}

void Proxy::OnStdin() {
  ssize_t n = read(STDIN_FILENO, read_buffer_.data(), read_buffer_.size());
  if (n <= 0) {
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, STDIN_FILENO, nullptr);
    stdin_open_ = false;
    return;
  }
  stdin_buffer_.append(read_buffer_.data(), n);
  size_t newline;
  while ((newline = stdin_buffer_.find('\n')) != std::string::npos) {
    std::string line = stdin_buffer_.substr(0, newline);
    stdin_buffer_.erase(0, newline + 1);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string reply = Execute(line);
    std::fprintf(stdout, "%s\n", reply.c_str());
    std::fflush(stdout);
  }
  if (stdin_buffer_.size() > kMaxControlLine) stdin_buffer_.clear();
}

std::string Proxy::Execute(std::string_view line) {
  absl::StatusOr<Command> command = ParseCommand(line, static_cast<int>(links_.size()));
  if (!command.ok()) return StrCat("error ", command.status().message());
  if (command->kind == CommandKind::kStats) return StrCat("ok", StatsText());
  if (command->kind == CommandKind::kQuit) {
    quit_ = true;
    return "ok";
  }
  for (Link& link : links_) {
    if (command->link != Command::kAllLinks && command->link != link.index) continue;
    switch (command->kind) {
      case CommandKind::kDelay:
        link.delay_ms = command->delay_ms;
        link.jitter_ms = command->jitter_ms;
        break;
      case CommandKind::kBandwidth:
        SetBandwidth(link, command->bandwidth_mbit);
        break;
      case CommandKind::kCut:
      case CommandKind::kBlackhole:
      case CommandKind::kRestore: {
        LinkMode mode = command->kind == CommandKind::kCut         ? LinkMode::kCut
                        : command->kind == CommandKind::kBlackhole ? LinkMode::kBlackhole
                                                                   : LinkMode::kNormal;
        if (absl::Status status = SetMode(link, mode); !status.ok()) {
          return StrCat("error link ", link.index, ": ", status.message());
        }
        break;
      }
      default:
        break;
    }
  }
  return "ok";
}

std::string Proxy::StatsText() const {
  std::string text;
  for (const Link& link : links_) {
    text += StrCat(" ",
                   link.index,
                   ":mode=",
                   ModeName(link.mode),
                   ",conns=",
                   link.conns.size(),
                   ",accepted=",
                   link.accepted,
                   ",refused=",
                   link.refused,
                   ",connect_failed=",
                   link.connect_failed,
                   ",delay_ms=",
                   link.delay_ms,
                   ",jitter_ms=",
                   link.jitter_ms,
                   ",bandwidth_mbit=",
                   link.bandwidth_mbit);
    const char* names[2] = {"c2s", "s2c"};
    for (int d = 0; d < 2; ++d) {
      const DirectionStats& s = link.stats[d];
      text += StrCat(",",
                     names[d],
                     "_bytes=",
                     s.bytes_out,
                     ",",
                     names[d],
                     "_chunks=",
                     s.chunks_out,
                     ",",
                     names[d],
                     "_bytes_in=",
                     s.bytes_in,
                     ",",
                     names[d],
                     "_dropped=",
                     s.dropped_bytes);
    }
  }
  return text;
}

}  // namespace strata::linkem
