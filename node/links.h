// What the worker needs from the streams it answers on, as small interfaces: the gRPC reactors
// implement them in service.cc, tests implement them with fakes.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "strata/v1/node.pb.h"

namespace strata::node {

// The session stream a client opened to this node.
class ClientLink {
 public:
  virtual ~ClientLink() = default;
  virtual void Send(v1::SessionResponse msg) = 0;
  // Ends the stream with `status` after queued messages (the same code and message on the wire).
  virtual void Close(absl::Status status) = 0;
};

// A Push stream from the previous hop.
class UpstreamLink {
 public:
  virtual ~UpstreamLink() = default;
  // Ends the stream with `status` (the same code and message on the wire).
  virtual void Close(absl::Status status) = 0;
};

// A Push stream this node opened to the next hop of a session.
class DownstreamLink {
 public:
  virtual ~DownstreamLink() = default;
  virtual void Send(v1::PushRequest msg) = 0;
  // Half-closes the stream (no more ops).
  virtual void Close() = 0;
};

// Opens a Push stream to `address`. `on_failed` runs (on any thread) if the stream ends before
// Close: with an error, or OK when the next hop ended its session.
using DownstreamFactory = std::function<std::shared_ptr<DownstreamLink>(
    const std::string& address, std::function<void(absl::Status)> on_failed)>;

}  // namespace strata::node
