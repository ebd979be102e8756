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

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "node/link_board.h"
#include "node/links.h"
#include "node/thread_set.h"
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
  // Runs the links' background threads, outgoing and incoming (needed with a provider). Not
  // owned: it must outlive every link made with these options and be destroyed only after every
  // link was closed or its stream ended (NodeServer destroys it after its worker and service).
  ThreadSet* threads = nullptr;
};

// Opens the gRPC push stream under a hand-off link: `on_response` gets every PushResponse,
// `on_failed` the stream's failure (both on any thread).
using PushStreamFactory = std::function<std::shared_ptr<DownstreamLink>(
    const std::string& address,
    std::function<void(const v1::PushResponse&)> on_response,
    std::function<void(absl::Status)> on_failed)>;

// The DownstreamFactory the worker uses: every push stream is wrapped in a hand-off link that
// offers the provider's transport (when there is one) and reports itself on the board (see
// node/handoff_outbound.h).
DownstreamFactory HandoffDownstreamFactory(HandoffOptions options, PushStreamFactory streams);

// The next hop's side of one push stream, created when it accepts an offer: orders the stream's
// messages, receives flagged payloads on the link and hands complete ops on.
//
// Replies and deliveries (the hooks) run on one thread at a time, the flusher, which holds
// flush_mu_: the stream's reaction thread after a message, or the link's thread after a payload.
// A hook may end the stream inline, and the stream's OnDone then calls Stop on the flusher itself:
// that Stop only records the stop (waiting for flush_mu_ there would wait for itself), and the
// flusher delivers nothing more once its hook returns. A Stop on any other thread waits for the
// flusher, so no op reaches the worker after Stop returned. Likewise a Flush that a hook causes on
// the flusher only asks the running one to go round again.
class HandoffInbound : public std::enable_shared_from_this<HandoffInbound> {
 public:
  struct Hooks {
    // Hands a complete op to the worker; false when its queue is full.
    std::function<bool(v1::Op)> deliver;
    // Sends a PushResponse to the previous hop.
    std::function<void(v1::PushResponse)> reply;
    // Ends the push stream (after `deliver` refused an op).
    std::function<void(absl::Status)> close;
  };
  // Accepts `offer` (already checked with CanAccept, its share of the budget taken): answers
  // ACCEPTED through `hooks.reply` before any other reply, and connects in the background, on a
  // thread of `options.threads`. `width`: floats per row.
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
  };
  HandoffInbound(const HandoffOptions& options, int width, int max_rows, Hooks hooks);
  // Queues the answer ACCEPTED, the first reply.
  void QueueAccepted();
  // The link's thread: connects, then receives linked payloads in order until the stream or the
  // link ends.
  void Run(v1::HandoffOffer offer);
  // Joins the rendezvous and queues READY or FAILED. False when the stream stopped meanwhile;
  // else `*transport` is the link to receive on (null when there is none).
  bool Connect(const v1::HandoffOffer& offer, std::shared_ptr<HandoffTransport>* transport);
  void Receive(HandoffTransport& transport);
  // Queues a message's op behind the others; true when too many are held (the stream must end).
  bool TakeOpLocked(v1::Op op, bool hidden_on_link) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeLateLocked(const v1::LatePayload& late) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The payload of linked op `seq` arrived in `values`.
  void TakeReceivedLocked(uint64_t seq, const std::vector<float>& values)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailLocked(const std::string& reason, uint64_t op_seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends queued replies and delivers the complete ops at the head, in order.
  void Flush();
  // One round of Flush's hooks, for what it took; false when the stream ended in it.
  bool RunHooks(std::deque<v1::PushResponse>& replies, std::vector<v1::Op>& ops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(flush_mu_);
  // Whether a Stop on the flusher ended the stream (see the class comment).
  bool StoppedInHook();

  const HandoffOptions options_;
  const int width_;
  const int max_rows_;
  const Hooks hooks_;
  // Held by the flusher while it replies and delivers (see the class comment).
  absl::Mutex flush_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex mu_;
  absl::CondVar cv_;  // signalled when the link thread may have something to do
  std::deque<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::PushResponse> replies_ ABSL_GUARDED_BY(mu_);
  // op_seqs of linked payloads not yet received, in link order.
  std::deque<uint64_t> to_receive_ ABSL_GUARDED_BY(mu_);
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<HandoffTransport> transport_ ABSL_GUARDED_BY(mu_);
  // The thread running Flush's hooks; none outside them.
  std::thread::id flusher_ ABSL_GUARDED_BY(mu_);
  // A hook of the running Flush ended the stream (Stop on the flusher): it delivers nothing more.
  bool stopped_in_hook_ ABSL_GUARDED_BY(mu_) = false;
  // A hook caused a Flush on the flusher itself: the running one goes round once more instead.
  bool flush_again_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata::node
