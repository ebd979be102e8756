// Direct hand-off of forward payloads between two nodes (NCCL between GPU nodes of one host),
// negotiated over the Push stream, with gRPC as the control plane and the fallback.
//
// Protocol on one Push stream, previous hop U (rank 0), next hop D (rank 1):
//   1. U sends, after its first message, PushRequest{handoff_offer} (a fresh rendezvous).
//   2. D answers HandoffAnswer DECLINED (reason) or ACCEPTED; it accepts only on a push stream
//      its worker accepted (open session, right token), so the offer waits in the worker's queue
//      behind the stream's opening. Both then connect in background threads (the streams never
//      block); D answers READY or FAILED (reason).
//   3. Once U's own connect succeeded and READY came, U sends each forward as metadata only
//      (hidden_on_link, in stream order) and its rows on the link; D receives them in the same
//      order, delivers the op to its worker and acknowledges it (link_received).
//   4. Any failure (connect, send, receive, a timeout) ends the link for good on that stream:
//      U resends over gRPC (late_payload) every payload not acknowledged yet and sends the rest
//      as plain forwards; D delivers ops strictly in arrival order, holding any whose payload is
//      still missing. Nothing is lost and op order is kept, so failover and redirects work as on
//      a plain stream. Each fallback is logged once.
// A node that knows nothing of this ignores the offer (a message without an op), and U never
// leaves gRPC.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "node/links.h"
#include "strata/v1/node.pb.h"

namespace strata::node {

// One end of an established link carrying f32 payloads in order.
class HandoffTransport {
 public:
  virtual ~HandoffTransport() = default;
  // Sends `data`; returns once it is handed to the link, or an error (DEADLINE_EXCEEDED after
  // `timeout`). After an error the link is unusable.
  virtual absl::Status Send(std::span<const float> data, absl::Duration timeout) = 0;
  // Receives exactly data.size() floats (the next payload), or an error after `timeout`.
  virtual absl::Status Recv(std::span<float> data, absl::Duration timeout) = 0;
  // Makes a blocked or later Send/Recv fail soon (any thread).
  virtual void Abort() = 0;
};

// Makes and takes offers for one node. Implementations are thread-safe.
class HandoffProvider {
 public:
  virtual ~HandoffProvider() = default;
  // A fresh offer to a next hop; an error says why this node offers nothing (gRPC only).
  virtual absl::StatusOr<v1::HandoffOffer> Offer() = 0;
  // OK when this node can take `offer` from its previous hop, else the reason it declines.
  virtual absl::Status CanAccept(const v1::HandoffOffer& offer) = 0;
  // Joins the rendezvous of `offer`: as rank 0 when `offering`, else rank 1. Blocks at most
  // about `timeout`.
  virtual absl::StatusOr<std::unique_ptr<HandoffTransport>> Connect(const v1::HandoffOffer& offer,
                                                                    bool offering,
                                                                    absl::Duration timeout) = 0;
};

// This machine's identity for "same host" checks: the kernel boot id and the host name.
std::string HostIdentity();

// What each push stream to a next hop uses, for the status line, metrics and Info.
class LinkBoard {
 public:
  uint64_t Add(v1::DownstreamLinkInfo info);
  void Update(uint64_t key, const std::string& transport, const std::string& reason);
  void SetSession(uint64_t key, const std::string& session_id);
  void CountPayload(uint64_t key);  // one more payload sent on the link
  void Remove(uint64_t key);
  std::vector<v1::DownstreamLinkInfo> Snapshot() const;
  // Open links by transport, e.g. {"grpc": 2, "nccl": 1}.
  std::map<std::string, int> Counts() const;
  // "links nccl 1, grpc 2" (empty when no link is open).
  std::string Summary() const;

 private:
  mutable std::mutex mu_;
  uint64_t next_ = 1;
  std::map<uint64_t, v1::DownstreamLinkInfo> links_;  // guarded by mu_
};

// Caps the hand-off links of one node (each holds a communicator and device buffers), shared by
// its outgoing and incoming streams. Thread-safe.
class LinkBudget {
 public:
  explicit LinkBudget(int limit) : limit_(limit) {}
  // False when `limit` links are open already.
  bool TryTake() {
    int n = open_.load();
    while (n < limit_) {
      if (open_.compare_exchange_weak(n, n + 1)) return true;
    }
    return false;
  }
  void Give() { open_.fetch_sub(1); }
  int limit() const { return limit_; }
  int open() const { return open_.load(); }

 private:
  const int limit_;
  std::atomic<int> open_{0};
};

struct HandoffOptions {
  // Null: every link is plain gRPC, for `off_reason`.
  std::shared_ptr<HandoffProvider> provider;
  std::string off_reason = "no hand-off transport on this node";
  absl::Duration connect_timeout = absl::Seconds(5);
  // One payload's send or receive (they start when the metadata is sent / has arrived).
  absl::Duration io_timeout = absl::Seconds(1);
  // Payloads sent but not yet acknowledged (kept for a resend); the sender waits beyond this.
  size_t max_unacked = 64;
  std::shared_ptr<LinkBoard> board;  // may be null
  // Links set up or being set up, node-wide; streams beyond it stay on gRPC.
  std::shared_ptr<LinkBudget> budget = std::make_shared<LinkBudget>(8);
};

// Opens the gRPC push stream under a hand-off link: `on_response` gets every PushResponse,
// `on_failed` the stream's failure (both on any thread).
using PushStreamFactory = std::function<std::shared_ptr<DownstreamLink>(
    const std::string& address,
    std::function<void(const v1::PushResponse&)> on_response,
    std::function<void(grpc::Status)> on_failed)>;

// The DownstreamFactory the worker uses: every push stream is wrapped in a hand-off link that
// offers the provider's transport (when there is one) and reports itself on the board.
DownstreamFactory HandoffDownstreamFactory(HandoffOptions options, PushStreamFactory streams);

// The next hop's side of one push stream, created when it accepts an offer: orders the stream's
// messages, receives flagged payloads on the link and hands complete ops on.
class HandoffInbound : public std::enable_shared_from_this<HandoffInbound> {
 public:
  struct Hooks {
    // Hands a complete op to the worker; false when its queue is full.
    std::function<bool(v1::Op)> deliver;
    // Sends a PushResponse to the previous hop.
    std::function<void(v1::PushResponse)> reply;
    // Ends the push stream (after `deliver` refused an op).
    std::function<void(grpc::Status)> close;
  };
  // Accepts `offer` (already checked with CanAccept, its share of the budget taken): answers
  // ACCEPTED through `hooks.reply` before any other reply, and connects in the background.
  // `width`: floats per row.
  static std::shared_ptr<HandoffInbound> Start(
      const HandoffOptions& options, v1::HandoffOffer offer, int width, int max_rows, Hooks hooks);
  ~HandoffInbound();

  // Every later message of the stream (ops, late payloads, close notices), in arrival order.
  void Push(v1::PushRequest msg);
  // The stream ended: no more deliveries; the link is torn down in the background.
  void Stop();

 private:
  struct Entry {
    v1::Op op;
    bool awaiting = false;  // its hidden states are still to come (link or late payload)
    bool on_link = false;   // sent on the link: the receiver takes it in order
  };
  HandoffInbound(const HandoffOptions& options, int width, int max_rows, Hooks hooks);
  void Run(v1::HandoffOffer offer);
  void TakeLateLocked(const v1::LatePayload& late);
  void FailLocked(const std::string& reason, uint64_t op_seq);
  // Sends queued replies and delivers the complete ops at the head, in order.
  void Flush();

  const HandoffOptions options_;
  const int width_;
  const int max_rows_;
  const Hooks hooks_;
  // Held while replying and delivering; taken before mu_. Recursive: a hook may end the stream
  // inline, and its OnDone calls Stop on this thread.
  std::recursive_mutex flush_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> entries_;                    // guarded by mu_
  std::deque<v1::PushResponse> replies_;         // guarded by mu_
  std::deque<uint64_t> to_receive_;              // op_seqs of linked payloads not yet received
  bool ready_ = false;                           // guarded by mu_
  bool failed_ = false;                          // guarded by mu_
  bool stopped_ = false;                         // guarded by mu_
  std::shared_ptr<HandoffTransport> transport_;  // guarded by mu_
};

}  // namespace strata::node
