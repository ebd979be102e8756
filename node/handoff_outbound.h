// The previous hop's side of one push stream (U in node/handoff.h's protocol): the hand-off link
// that offers the provider's transport, sends linked payloads on it once the next hop is ready,
// and falls back to gRPC for good on any failure.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "node/handoff.h"
#include "node/links.h"
#include "strata/v1/node.pb.h"

namespace strata::node {

// The worker thread calls Send and Close; a background thread (only when there is a provider, on
// options.threads) negotiates, sends linked payloads in order and falls back; stream callbacks
// only queue responses for it. The thread holds the link until it ends: after Close, after the
// stream failed, or once on gRPC for good with nothing queued (the worker then sends directly).
class HandoffOutbound final : public DownstreamLink,
                              public std::enable_shared_from_this<HandoffOutbound> {
 public:
  HandoffOutbound(HandoffOptions options, std::string address);
  ~HandoffOutbound() override;

  // Opens the push stream with `streams`, reports the link on the board and, with a provider,
  // starts the link's thread. `on_failed` gets the stream's failure.
  void Start(const PushStreamFactory& streams, std::function<void(absl::Status)> on_failed);

  void Send(v1::PushRequest msg) override;
  void Close() override;

 private:
  enum class State { kNegotiating, kLinked, kGrpc };
  struct Item {
    v1::PushRequest msg;
    std::vector<float> payload;
    bool linked = false;
    bool close = false;
  };

  void OnResponse(const v1::PushResponse& r);
  void OnStreamFailed();
  // Waits for a HandoffAnswer (other responses are consumed); false after `deadline`, when the
  // stream failed or the link was closed.
  bool WaitAnswer(absl::Time deadline, v1::HandoffAnswer* answer);
  bool ClosingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The link's thread.
  void Run();
  void Negotiate();
  // Sends queued items in order until Close, a failed stream, or a fallback with nothing left to
  // send.
  void Serve();
  // Applies acknowledgements; returns the next hop's failure reason, if it reported one.
  std::string TakeResponsesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendItem(Item& item);
  // Waits until fewer than max_unacked payloads await an acknowledgement.
  bool WaitForRoom();
  static void SetHidden(v1::Op* op, const std::vector<float>& payload);
  // Ends the link for good: every payload the next hop has not confirmed is sent again over
  // gRPC; later forwards go plain. `notify`: tell the next hop (the failure was on this side).
  void Fallback(const std::string& reason, bool notify);
  void Report(const std::string& transport, const std::string& reason);
  // state_ as the link's thread sees it: that thread is its only writer, so it reads it without
  // the lock.
  State OwnState() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return state_; }
  std::string SessionForLog();

  const HandoffOptions options_;
  const std::string address_;
  // Set by Start, before the link's thread exists and before the worker's first Send or Close.
  std::shared_ptr<DownstreamLink> inner_;
  uint64_t board_key_ = 0;
  bool threaded_ = false;

  absl::Mutex mu_;
  absl::CondVar cv_;  // signalled whenever a field below changes that a waiter may need
  State state_ ABSL_GUARDED_BY(mu_) = State::kNegotiating;  // written by the link's thread
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::PushResponse> responses_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // the link's thread is sending an item
  bool first_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool thread_done_ ABSL_GUARDED_BY(mu_) = false;
  std::string board_session_ ABSL_GUARDED_BY(mu_);  // set once by the worker thread

  // The link's thread only.
  std::unique_ptr<HandoffTransport> transport_;
  std::string transport_name_;
  std::map<uint64_t, std::vector<float>> unacked_;
  bool holds_budget_ = false;
};

}  // namespace strata::node
