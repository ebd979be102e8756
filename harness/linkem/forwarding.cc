// The data path of Proxy: reading chunks, holding them for their release time, pacing them
// through the link's token bucket, and passing FIN/RST on in order.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "harness/linkem/proxy.h"
#include "harness/linkem/socket_util.h"

namespace strata::linkem {
namespace {

// Bytes one Drive() may move before yielding to other connections (the rest runs next turn).
constexpr size_t kDriveBudgetBytes = 4 << 20;

}  // namespace

void Proxy::OnSide(Conn& conn, int side, uint32_t events) {
  Side& s = conn.side[side];
  if (side == kUpstreamSide && conn.connecting) {
    int error = 0;
    socklen_t length = sizeof(error);
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0 || (events & (EPOLLERR | EPOLLHUP))) {
      ++links_[conn.link].connect_failed;
      Abort(conn);  // the client sees a reset, as it would from a refused hop
      return;
    }
    if (!(events & EPOLLOUT)) return;
    conn.connecting = false;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s.readable = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) s.writable = true;
  Drive(conn);
}

void Proxy::Drive(Conn& conn) {
  if (conn.dead) return;
  size_t budget = kDriveBudgetBytes;
  for (int d = 0; d < 2; ++d) {
    while (true) {
      ReadInto(conn, d, budget);
      bool wrote = Pump(conn, d, budget);
      if (conn.dead) return;
      if (budget == 0) {
        ready_.push_back(conn.id);
        return;
      }
      // Writing made room below the queue cap: read more while the source has data.
      if (!wrote || !CanRead(conn, d)) break;
    }
  }
  if (conn.pipe[0].end_delivered && conn.pipe[1].end_delivered) CloseGracefully(conn);
}

bool Proxy::CanRead(const Conn& conn, int d) const {
  const Pipe& pipe = conn.pipe[d];
  return !conn.dead && conn.side[d].readable && !pipe.src_eof &&
         pipe.queued_bytes < options_.max_queue_bytes && !(d == kUpstreamSide && conn.connecting);
}

void Proxy::ReadInto(Conn& conn, int d, size_t& budget) {
  Pipe& pipe = conn.pipe[d];
  Side& src = conn.side[d];
  Link& link = links_[conn.link];
  while (budget > 0 && CanRead(conn, d)) {
    ssize_t n = recv(src.fd, read_buffer_.data(), read_buffer_.size(), 0);
    if (n > 0) {
      budget -= std::min(budget, static_cast<size_t>(n));
      link.stats[d].bytes_in += n;
      if (link.mode == LinkMode::kBlackhole) {
        link.stats[d].dropped_bytes += n;
        continue;
      }
      Chunk chunk;
      chunk.data.assign(read_buffer_.data(), n);
      Enqueue(conn, d, std::move(chunk));
    } else if (n == 0) {
      pipe.src_eof = true;
      QueueEndIfDue(conn, d);
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      src.readable = false;
    } else {
      // Data read before the error is still delivered; the reset follows it after the delay.
      pipe.src_eof = true;
      pipe.src_error = true;
      QueueEndIfDue(conn, d);
    }
  }
}

bool Proxy::Pump(Conn& conn, int d, size_t& budget) {
  Pipe& pipe = conn.pipe[d];
  Side& dst = conn.side[1 - d];
  Link& link = links_[conn.link];
  TokenBucket& bucket = link.bucket[d];
  bool progress = false;
  int64_t now = MonotonicNowNs();
  while (!pipe.queue.empty() && budget > 0) {
    Chunk& chunk = pipe.queue.front();
    if (chunk.release_ns > now) {
      ScheduleWake(conn, d, chunk.release_ns);
      break;
    }
    if (chunk.kind == Chunk::Kind::kReset) {
      Abort(conn);
      return true;
    }
    if (d == kClientSide && conn.connecting) break;
    if (chunk.kind == Chunk::Kind::kFin) {
      shutdown(dst.fd, SHUT_WR);
      pipe.queue.pop_front();
      pipe.end_delivered = true;
      return true;
    }
    if (!dst.writable) break;
    size_t length = chunk.data.size() - chunk.offset;
    if (!bucket.unlimited()) {
      size_t need = std::min(length, bucket.quantum());
      size_t available = bucket.Available(now);
      if (available < need) {
        ScheduleWake(conn, d, bucket.ReadyAt(need, now));
        break;
      }
      length = std::min(length, available);
    }
    ssize_t n = send(dst.fd, chunk.data.data() + chunk.offset, length, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        dst.writable = false;
        break;
      }
      Abort(conn);  // the destination reset: reset the source too
      return true;
    }
    progress = true;
    if (!bucket.unlimited()) bucket.Consume(n);
    budget -= std::min(budget, static_cast<size_t>(n));
    link.stats[d].bytes_out += n;
    chunk.offset += n;
    pipe.queued_bytes -= n;
    if (chunk.offset == chunk.data.size()) {
      ++link.stats[d].chunks_out;
      pipe.queue.pop_front();
    }
  }
  return progress;
}

void Proxy::Enqueue(Conn& conn, int d, Chunk chunk) {
  Pipe& pipe = conn.pipe[d];
  // Jitter may draw a shorter delay than the previous chunk's; it waits for that one anyway.
  chunk.release_ns = std::max(MonotonicNowNs() + DelayNs(links_[conn.link]), pipe.last_release_ns);
  pipe.last_release_ns = chunk.release_ns;
  pipe.queued_bytes += chunk.data.size();
  pipe.queue.push_back(std::move(chunk));
}

void Proxy::QueueEndIfDue(Conn& conn, int d) {
  Pipe& pipe = conn.pipe[d];
  if (!pipe.src_eof || pipe.end_queued || pipe.end_delivered) return;
  // A black hole passes nothing on, not even the end of the stream; `restore` releases it.
  if (links_[conn.link].mode == LinkMode::kBlackhole) return;
  Chunk end;
  end.kind = pipe.src_error ? Chunk::Kind::kReset : Chunk::Kind::kFin;
  Enqueue(conn, d, std::move(end));
  pipe.end_queued = true;
}

void Proxy::ScheduleWake(Conn& conn, int d, int64_t at_ns) {
  Pipe& pipe = conn.pipe[d];
  if (pipe.wake_ns <= at_ns) return;  // an earlier wake re-pumps and reschedules
  pipe.wake_ns = at_ns;
  wakes_.push({at_ns, conn.id, d});
}

int64_t Proxy::DelayNs(const Link& link) {
  double ms = link.delay_ms;
  if (link.jitter_ms > 0) {
    ms += std::uniform_real_distribution<double>(-link.jitter_ms, link.jitter_ms)(rng_);
  }
  return static_cast<int64_t>(std::max(0.0, ms) * 1e6);
}

void Proxy::Abort(Conn& conn) {
  if (conn.dead) return;
  Link& link = links_[conn.link];
  for (int d = 0; d < 2; ++d) link.stats[d].dropped_bytes += conn.pipe[d].queued_bytes;
  for (Side& side : conn.side) {
    if (side.fd >= 0) CloseWithReset(side.fd);
    side.fd = -1;
  }
  conn.dead = true;
  link.conns.erase(conn.id);
  dead_.push_back(conn.id);
}

void Proxy::CloseGracefully(Conn& conn) {
  for (Side& side : conn.side) {
    if (side.fd >= 0) close(side.fd);
    side.fd = -1;
  }
  conn.dead = true;
  links_[conn.link].conns.erase(conn.id);
  dead_.push_back(conn.id);
}

absl::Status Proxy::SetMode(Link& link, LinkMode mode) {
  LinkMode old = link.mode;
  if (old == mode) return absl::OkStatus();
  if (old == LinkMode::kCut && listen(link.listen_fd, kListenBacklog) != 0) {
    return ErrnoError("listen again");
  }
  link.mode = mode;
  std::vector<uint64_t> ids(link.conns.begin(), link.conns.end());
  for (uint64_t id : ids) {
    Conn* conn = FindConn(id);
    if (conn == nullptr) continue;
    if (mode == LinkMode::kCut) {
      Abort(*conn);
      continue;
    }
    for (int d = 0; d < 2; ++d) {
      Pipe& pipe = conn->pipe[d];
      if (mode == LinkMode::kBlackhole) {
        link.stats[d].dropped_bytes += pipe.queued_bytes;
        pipe.queue.clear();
        pipe.queued_bytes = 0;
        pipe.end_queued = false;
      } else {
        QueueEndIfDue(*conn, d);
      }
    }
    ready_.push_back(id);
  }
  // On Linux, shutting a listener down resets its pending connections and refuses new ones
  // while the port stays bound; listen() reopens it.
  if (mode == LinkMode::kCut) shutdown(link.listen_fd, SHUT_RD);
  return absl::OkStatus();
}

void Proxy::SetBandwidth(Link& link, double mbit) {
  link.bandwidth_mbit = mbit;
  int64_t now = MonotonicNowNs();
  for (TokenBucket& bucket : link.bucket) bucket.SetRate(mbit * 125000, now);  // Mbit/s -> B/s
  // Pipes waiting for tokens at the old rate re-pump now.
  ready_.insert(ready_.end(), link.conns.begin(), link.conns.end());
}

}  // namespace strata::linkem
