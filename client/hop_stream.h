// One Session stream from the client to one hop, with a reader thread that hands everything the
// hop sends to a callback.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "strata/v1/node.grpc.pb.h"

namespace strata::client {

class HopStream {
 public:
  // Called on the reader thread for every message, and once with `ended` set (and the final
  // status) when the stream is over.
  using Handler = std::function<void(const v1::SessionResponse* message, const grpc::Status& end)>;

  // Starts the stream and sends `open`; messages go to `handler`.
  HopStream(const std::string& address, const v1::OpenSession& open, Handler handler);
  ~HopStream();  // Close()s

  bool Write(const v1::SessionRequest& request);
  // Half-closes: the hop ends the session once it has read everything sent before. No more
  // writes go out. Returns at once.
  void EndWrites();
  // Half-closes, waits up to `grace` for the hop to end the stream, then cancels it.
  void Close(absl::Duration grace);

 private:
  void ReadLoop();

  std::unique_ptr<v1::Node::Stub> stub_;
  grpc::ClientContext context_;
  // Not guarded: the reader thread alone reads from it, and writes to it (and the half-close)
  // go under write_mu_, which gRPC allows (one read and one write in flight at once).
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
  Handler handler_;
  std::thread reader_;
  absl::Mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // no more writes
  bool joined_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one write (or the half-close) at a time
};

}  // namespace strata::client
