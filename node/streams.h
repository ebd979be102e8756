// Stream plumbing of the node, on top of gRPC's callback API.
//
// Reactions never block or compute: reads are handed to the worker's queue, and the worker sends
// responses through an Outbox, which queues them and keeps exactly one write in flight. The
// worker holds Outboxes by shared_ptr; a stream that has ended turns later sends into no-ops.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace strata::node {

// Serializes writes on one stream. `start_write(msg)` starts a write of a message that stays
// alive until the matching WriteDone; `finish(status)` ends the stream.
template <typename Msg>
class Outbox {
 public:
  Outbox(std::function<void(const Msg*)> start_write, std::function<void(grpc::Status)> finish)
      : start_write_(std::move(start_write)), finish_(std::move(finish)) {}

  // Queues a message (dropped when the stream is finishing or gone).
  void Send(Msg msg) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closing_ || gone_) return;
      queue_.push_back(std::move(msg));
      if (writing_) return;
      writing_ = true;
      current_ = std::move(queue_.front());
      queue_.pop_front();
      ++starting_;
    }
    Nested([&] { start_write_(&current_); });
    EndStart();
  }

  // Ends the stream with `status` once queued messages are written.
  void Close(grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closing_ || gone_) return;
      closing_ = true;
      status_ = std::move(status);
      if (writing_) return;
      finished_ = true;
      ++starting_;
    }
    Nested([&] { finish_(status_); });
    EndStart();
  }

  // Called by the reactor when a write completed.
  void WriteDone(bool ok) {
    bool start = false, finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) queue_.clear();
      if (!queue_.empty() && !gone_) {
        current_ = std::move(queue_.front());
        queue_.pop_front();
        start = true;
      } else {
        writing_ = false;
        if (closing_ && !finished_ && !gone_) finish = finished_ = true;
      }
      if (start || finish) ++starting_;
    }
    if (start) Nested([&] { start_write_(&current_); });
    if (finish) Nested([&] { finish_(status_); });
    if (start || finish) EndStart();
  }

  // Called by the reactor from OnDone: waits for any write being started on another thread, and
  // turns every later call into a no-op, so nothing touches the reactor afterwards.
  void Gone() {
    std::unique_lock<std::mutex> lock(mu_);
    gone_ = true;
    queue_.clear();
    // A reaction run inline from inside our own start call must not wait for itself.
    const int own = InsideStart() ? 1 : 0;
    idle_.wait(lock, [&] { return starting_ <= own; });
  }

  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closing_ || gone_;
  }

 private:
  std::function<void(const Msg*)> start_write_;
  std::function<void(grpc::Status)> finish_;
  static bool& InsideStart() {
    static thread_local bool inside = false;
    return inside;
  }
  template <typename F>
  static void Nested(F&& f) {
    bool& inside = InsideStart();
    const bool was = inside;
    inside = true;
    f();
    inside = was;
  }

  void EndStart() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--starting_ == 0) idle_.notify_all();
  }

  mutable std::mutex mu_;
  std::condition_variable idle_;
  int starting_ = 0;  // start_write_/finish_ calls in progress outside the lock
  std::deque<Msg> queue_;
  Msg current_;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool gone_ = false;
  grpc::Status status_;
};

}  // namespace strata::node
