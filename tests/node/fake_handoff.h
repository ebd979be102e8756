// An in-process hand-off transport for tests: offers rendezvous on a shared hub, payloads travel
// through a queue, and failures are injected on command (decline, connect, the n-th send or
// receive).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "common/strings.h"
#include "node/handoff.h"

namespace strata::testkit {

// Payload queues keyed by rendezvous, shared by the providers of the nodes of one test.
class FakeHub {
 public:
  struct Pipe {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::vector<float>> queue;
    int joined = 0;
    bool broken = false;
  };

  std::string NewRendezvous() {
    std::lock_guard<std::mutex> lock(mu_);
    return StrCat("fake-", ++next_);
  }
  std::shared_ptr<Pipe> Get(const std::string& rendezvous) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& p = pipes_[rendezvous];
    if (!p) p = std::make_shared<Pipe>();
    return p;
  }

 private:
  std::mutex mu_;
  int next_ = 0;
  std::map<std::string, std::shared_ptr<Pipe>> pipes_;
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
    std::lock_guard<std::mutex> lock(pipe_->mu);
    if (pipe_->broken) return absl::UnavailableError("the fake link is broken");
    if (faults_.fail_send_after >= 0 && sent_ >= faults_.fail_send_after) {
      Break();
      return absl::UnavailableError("injected send failure");
    }
    ++sent_;
    sends_->fetch_add(1);
    pipe_->queue.emplace_back(data.begin(), data.end());
    pipe_->cv.notify_all();
    return absl::OkStatus();
  }

  absl::Status Recv(std::span<float> data, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(pipe_->mu);
    if (faults_.fail_recv_after >= 0 && received_ >= faults_.fail_recv_after) {
      Break();
      return absl::UnavailableError("injected receive failure");
    }
    const bool got = pipe_->cv.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
      return pipe_->broken || !pipe_->queue.empty();
    });
    if (!pipe_->queue.empty()) {
      std::vector<float> v = std::move(pipe_->queue.front());
      pipe_->queue.pop_front();
      if (v.size() != data.size()) {
        Break();
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
    std::lock_guard<std::mutex> lock(pipe_->mu);
    Break();
  }

 private:
  void Break() {  // with pipe_->mu held
    pipe_->broken = true;
    pipe_->cv.notify_all();
  }

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
    auto pipe = hub_->Get(offer.rendezvous());
    std::unique_lock<std::mutex> lock(pipe->mu);
    if (faults_.fail_connect) {
      pipe->broken = true;
      pipe->cv.notify_all();
      return absl::UnavailableError("injected connect failure");
    }
    ++pipe->joined;
    pipe->cv.notify_all();
    if (!pipe->cv.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
          return pipe->joined >= 2 || pipe->broken;
        })) {
      return absl::DeadlineExceededError("the peer did not join");
    }
    if (pipe->broken) return absl::UnavailableError("the peer failed to join");
    return std::unique_ptr<node::HandoffTransport>(
        new FakeTransport(pipe, faults_, sends_, recvs_));
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
