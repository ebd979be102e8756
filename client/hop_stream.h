// One Session stream from the client to one hop, with a reader thread that hands everything the
// hop sends to a callback.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <thread>

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
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
  Handler handler_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool ended_ = false;   // guarded by mu_
  bool closed_ = false;  // guarded by mu_: no more writes
  bool joined_ = false;  // guarded by mu_
  std::mutex write_mu_;
};

}  // namespace strata::client
