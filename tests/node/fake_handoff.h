// An in-process hand-off transport for tests: offers rendezvous on a shared hub, payloads travel
// through a queue, and failures are injected on command (decline, connect, the n-th send or
// receive).
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/strings.h"
#include "node/handoff.h"

namespace strata::testkit {

// Payload queues keyed by rendezvous, shared by the providers of the nodes of one test.
class FakeHub {
 public:
  // Waiters wake when the lock is released after a change.
  struct Pipe {
    absl::Mutex mu;
    std::deque<std::vector<float>> queue ABSL_GUARDED_BY(mu);
    int joined ABSL_GUARDED_BY(mu) = 0;
    bool broken ABSL_GUARDED_BY(mu) = false;
  };

  std::string NewRendezvous() {
    absl::MutexLock lock(&mu_);
    return StrCat("fake-", ++next_);
  }
  std::shared_ptr<Pipe> Get(const std::string& rendezvous) {
    absl::MutexLock lock(&mu_);
    auto& p = pipes_[rendezvous];
    if (!p) p = std::make_shared<Pipe>();
    return p;
  }

 private:
  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, std::shared_ptr<Pipe>> pipes_ ABSL_GUARDED_BY(mu_);
};

struct FakeFaults {
  std::string host = "host-a";
  std::string decline;  // CanAccept refuses with this reason
  bool fail_connect = false;
  int fail_send_after = -1;  // sends that succeed before one fails (-1: never)
  int fail_recv_after = -1;  // receives that succeed before one fails (-1: never)
};

class FakeTransport final : public node::HandoffTransport {
 public:
  FakeTransport(std::shared_ptr<FakeHub::Pipe> pipe,
                const FakeFaults& faults,
                std::shared_ptr<std::atomic<int>> sends,
                std::shared_ptr<std::atomic<int>> recvs)
      : pipe_(std::move(pipe)), faults_(faults), sends_(sends), recvs_(recvs) {}
  ~FakeTransport() override { Abort(); }

  absl::Status Send(std::span<const float> data, absl::Duration) override {
    Pipe& pipe = *pipe_;
    absl::MutexLock lock(&pipe.mu);
    if (pipe.broken) return absl::UnavailableError("the fake link is broken");
    if (faults_.fail_send_after >= 0 && sent_ >= faults_.fail_send_after) {
      Break(pipe);
      return absl::UnavailableError("injected send failure");
    }
    ++sent_;
    sends_->fetch_add(1);
    pipe.queue.emplace_back(data.begin(), data.end());
    return absl::OkStatus();
  }

  absl::Status Recv(std::span<float> data, absl::Duration timeout) override {
    Pipe& pipe = *pipe_;
    absl::MutexLock lock(&pipe.mu);
    if (faults_.fail_recv_after >= 0 && received_ >= faults_.fail_recv_after) {
      Break(pipe);
      return absl::UnavailableError("injected receive failure");
    }
    auto ready = [&pipe]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pipe.mu) {
      return pipe.broken || !pipe.queue.empty();
    };
    const bool got = pipe.mu.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (!pipe.queue.empty()) {
      std::vector<float> v = std::move(pipe.queue.front());
      pipe.queue.pop_front();
      if (v.size() != data.size()) {
        Break(pipe);
        return absl::InternalError(
            StrCat("payload of ", v.size(), " floats, expected ", data.size()));
      }
      std::copy(v.begin(), v.end(), data.begin());
      ++received_;
      recvs_->fetch_add(1);
      return absl::OkStatus();
    }
    if (!got) return absl::DeadlineExceededError("fake receive timed out");
    return absl::UnavailableError("the fake link is broken");
  }

  void Abort() override {
    Pipe& pipe = *pipe_;
    absl::MutexLock lock(&pipe.mu);
    Break(pipe);
  }

 private:
  using Pipe = FakeHub::Pipe;
  static void Break(Pipe& pipe) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pipe.mu) { pipe.broken = true; }

  std::shared_ptr<FakeHub::Pipe> pipe_;
  const FakeFaults faults_;
  std::shared_ptr<std::atomic<int>> sends_, recvs_;
  int sent_ = 0, received_ = 0;
};

class FakeHandoff final : public node::HandoffProvider {
 public:
  FakeHandoff(std::shared_ptr<FakeHub> hub, FakeFaults faults)
      : hub_(std::move(hub)), faults_(std::move(faults)) {}

  absl::StatusOr<v1::HandoffOffer> Offer() override {
    v1::HandoffOffer o;
    o.set_transport("fake");
    o.set_host_id(faults_.host);
    o.set_rendezvous(hub_->NewRendezvous());
    return o;
  }

  absl::Status CanAccept(const v1::HandoffOffer& offer) override {
    if (!faults_.decline.empty()) return absl::FailedPreconditionError(faults_.decline);
    if (offer.transport() != "fake") return absl::UnimplementedError("not a fake offer");
    if (offer.host_id() != faults_.host) {
      return absl::FailedPreconditionError("the previous hop runs on another host");
    }
    return absl::OkStatus();
  }

  // Both ranks must join (like a collective), within `timeout`.
  absl::StatusOr<std::unique_ptr<node::HandoffTransport>> Connect(const v1::HandoffOffer& offer,
                                                                  bool,
                                                                  absl::Duration timeout) override {
    connects_->fetch_add(1);
    std::shared_ptr<FakeHub::Pipe> shared = hub_->Get(offer.rendezvous());
    FakeHub::Pipe& pipe = *shared;
    absl::MutexLock lock(&pipe.mu);
    if (faults_.fail_connect) {
      pipe.broken = true;
      return absl::UnavailableError("injected connect failure");
    }
    ++pipe.joined;
    auto joined = [&pipe]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pipe.mu) {
      return pipe.joined >= 2 || pipe.broken;
    };
    if (!pipe.mu.AwaitWithTimeout(absl::Condition(&joined), timeout)) {
      return absl::DeadlineExceededError("the peer did not join");
    }
    if (pipe.broken) return absl::UnavailableError("the peer failed to join");
    return std::unique_ptr<node::HandoffTransport>(
        new FakeTransport(shared, faults_, sends_, recvs_));
  }

  int connects() const { return connects_->load(); }  // Connect calls, as either rank
  int sends() const { return sends_->load(); }
  int recvs() const { return recvs_->load(); }

 private:
  std::shared_ptr<FakeHub> hub_;
  const FakeFaults faults_;
  std::shared_ptr<std::atomic<int>> connects_ = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<std::atomic<int>> sends_ = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<std::atomic<int>> recvs_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace strata::testkit
