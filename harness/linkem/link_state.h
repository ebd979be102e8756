// Per-link and per-connection state of the proxy's event loop (internal to strata_linkem).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <set>
#include <string>

#include "harness/linkem/address.h"
#include "harness/linkem/token_bucket.h"

namespace strata::linkem {

inline constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

enum class LinkMode { kNormal, kCut, kBlackhole };

// What one recv() returned, or the end of the stream, waiting for its release time.
struct Chunk {
  enum class Kind { kData, kFin, kReset };
  Kind kind = Kind::kData;
  int64_t release_ns = 0;  // monotonic time at which it may be written
  std::string data;        // kData only
  size_t offset = 0;       // bytes of `data` already written
};

// One direction of a connection: reads from side d, writes to side 1-d.
struct Pipe {
  std::deque<Chunk> queue;  // release times never decrease: no chunk overtakes another
  size_t queued_bytes = 0;  // unwritten data bytes in `queue`
  int64_t last_release_ns = 0;
  int64_t wake_ns = kNever;  // pending timer for this pipe, if any
  bool src_eof = false;      // the source sent FIN (or failed: src_error)
  bool src_error = false;
  bool end_queued = false;     // the FIN/RST marker is in `queue` (held back in blackhole mode)
  bool end_delivered = false;  // FIN passed on with shutdown(SHUT_WR)
};

// One socket of a connection. Sockets are registered edge-triggered, so these flags remember
// readiness between events and are cleared on EAGAIN.
struct Side {
  int fd = -1;
  bool readable = false;
  bool writable = false;
};

enum SideIndex { kClientSide = 0, kUpstreamSide = 1 };

struct Conn {
  uint64_t id = 0;
  int link = 0;
  Side side[2];             // kClientSide (accepted), kUpstreamSide (connected to the target)
  Pipe pipe[2];             // pipe[0]: client -> target, pipe[1]: target -> client
  bool connecting = false;  // upstream connect() in progress
  bool dead = false;        // fds closed; erased from the table at the end of the loop turn
};

struct DirectionStats {
  uint64_t bytes_in = 0;    // read from the source
  uint64_t bytes_out = 0;   // written to the destination
  uint64_t chunks_out = 0;  // chunks fully written
  uint64_t dropped_bytes = 0;
};

struct Link {
  int index = 0;
  SocketAddress listen_address;  // with the real bound port
  SocketAddress target_address;
  int listen_fd = -1;
  LinkMode mode = LinkMode::kNormal;
  double delay_ms = 0;
  double jitter_ms = 0;
  double bandwidth_mbit = 0;
  TokenBucket bucket[2];  // per direction, shared by the link's connections
  DirectionStats stats[2];
  std::set<uint64_t> conns;  // live connection ids
  uint64_t accepted = 0;
  uint64_t refused = 0;         // accepted while cut (reset at once)
  uint64_t connect_failed = 0;  // target unreachable: client reset
};

}  // namespace strata::linkem
