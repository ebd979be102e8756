// Stream plumbing of the node, on top of gRPC's callback API.
//
// Reactions never block or compute: reads are handed to the worker's queue, and the worker sends
// responses through an Outbox, which queues them and keeps exactly one write in flight. The
// worker holds Outboxes by shared_ptr; a stream that has ended turns later sends into no-ops.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

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
      absl::MutexLock lock(&mu_);
      if (closing_ || gone_) return;
      queue_.push_back(std::move(msg));
      if (writing_) return;
      writing_ = true;
      current_ = std::move(queue_.front());
      queue_.pop_front();
      ++starting_;
    }
    Nested([&] { start_write_(CurrentForWrite()); });
    EndStart();
  }

  // Ends the stream with `status` once queued messages are written.
  void Close(grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (closing_ || gone_) return;
      closing_ = true;
      status_ = std::move(status);
      if (writing_) return;
      finished_ = true;
      ++starting_;
    }
    Nested([&] { finish_(FinalStatus()); });
    EndStart();
  }

  // Called by the reactor when a write completed.
  void WriteDone(bool ok) {
    bool start = false, finish = false;
    {
      absl::MutexLock lock(&mu_);
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
    if (start) Nested([&] { start_write_(CurrentForWrite()); });
    if (finish) Nested([&] { finish_(FinalStatus()); });
    if (start || finish) EndStart();
  }

  // Called by the reactor from OnDone: waits for any write being started on another thread, and
  // turns every later call into a no-op, so nothing touches the reactor afterwards.
  void Gone() {
    absl::MutexLock lock(&mu_);
    gone_ = true;
    queue_.clear();
    // A reaction run inline from inside our own start call must not wait for itself.
    const int own = InsideStart() ? 1 : 0;
    auto idle = [this, own]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return starting_ <= own; };
    mu_.Await(absl::Condition(&idle));
  }

  bool closed() const {
    absl::MutexLock lock(&mu_);
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

  // The message being written. Read without the lock: only one write is in flight, and
  // current_ changes only once it completed (WriteDone), so it stays put until then.
  const Msg* CurrentForWrite() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return &current_; }
  // The status to finish with. Read without the lock: it is set once, with closing_, before the
  // one finish_ call is started, and never changes afterwards.
  const grpc::Status& FinalStatus() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return status_; }

  void EndStart() {
    absl::MutexLock lock(&mu_);  // releasing it wakes Gone's wait
    --starting_;
  }

  mutable absl::Mutex mu_;
  int starting_ ABSL_GUARDED_BY(mu_) =
      0;  // start_write_/finish_ calls in progress outside the lock
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  Msg current_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::node
