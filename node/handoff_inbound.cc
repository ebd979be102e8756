// HandoffInbound (node/handoff.h): the next hop's side of one push stream with a hand-off link.
#include <utility>

#include "common/logging.h"
#include "common/strings.h"
#include "node/handoff.h"
#include "transport/tensor_codec.h"

namespace strata::node {
namespace {

// Ops a next hop holds for one push stream while payloads are missing (the worker's own queue
// bound).
constexpr size_t kMaxHeldOps = 4096;

v1::PushResponse Answer(v1::HandoffAnswer::State state, const std::string& reason = "") {
  v1::PushResponse r;
  r.mutable_handoff()->set_state(state);
  r.mutable_handoff()->set_reason(reason);
  return r;
}

}  // namespace

HandoffInbound::HandoffInbound(const HandoffOptions& options, int width, int max_rows, Hooks hooks)
    : options_(options), width_(width), max_rows_(max_rows), hooks_(std::move(hooks)) {}

HandoffInbound::~HandoffInbound() = default;

std::shared_ptr<HandoffInbound> HandoffInbound::Start(
    const HandoffOptions& options, v1::HandoffOffer offer, int width, int max_rows, Hooks hooks) {
  STRATA_CHECK(options.threads != nullptr) << "a hand-off link needs a thread set";
  auto in = std::shared_ptr<HandoffInbound>(
      new HandoffInbound(options, width, max_rows, std::move(hooks)));
  // The first reply, whichever thread flushes first: READY or FAILED can only follow it.
  in->QueueAccepted();
  options.threads->Start([in, offer = std::move(offer)] {
    in->Flush();
    in->Run(offer);
  });
  return in;
}

void HandoffInbound::QueueAccepted() {
  absl::MutexLock lock(&mu_);
  replies_.push_back(Answer(v1::HandoffAnswer::ACCEPTED));
}

void HandoffInbound::Run(v1::HandoffOffer offer) {
  // The stream's accept took a share of the budget; this thread gives it back however it ends.
  struct GiveBack {
    LinkBudget* budget;
    ~GiveBack() { budget->Give(); }
  } give_back{options_.budget.get()};
  std::shared_ptr<HandoffTransport> transport;
  if (!Connect(offer, &transport)) return;
  Flush();
  if (!transport) return;
  Receive(*transport);
  transport->Abort();
}

bool HandoffInbound::Connect(const v1::HandoffOffer& offer,
                             std::shared_ptr<HandoffTransport>* transport) {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return false;  // the stream ended before the connect began
  }
  absl::StatusOr<std::unique_ptr<HandoffTransport>> t =
      options_.provider->Connect(offer, /*offering=*/false, options_.connect_timeout);
  absl::MutexLock lock(&mu_);
  if (stopped_) {
    if (t.ok()) (*t)->Abort();
    return false;
  }
  if (!t.ok()) {
    if (!failed_) {
      failed_ = true;
      STRATA_LOG(Info) << "push stream from " << offer.node_id()
                       << ": gRPC only: connect: " << t.status().message();
      replies_.push_back(
          Answer(v1::HandoffAnswer::FAILED, StrCat("connect: ", t.status().message())));
    }
    return true;
  }
  *transport = transport_ = std::move(*t);
  if (failed_) {
    (*transport)->Abort();  // the previous hop gave up meanwhile
  } else {
    ready_ = true;
    replies_.push_back(Answer(v1::HandoffAnswer::READY));
  }
  return true;
}

void HandoffInbound::Receive(HandoffTransport& transport) {
  std::vector<float> buf;
  while (true) {
    uint64_t seq = 0;
    size_t floats = 0;
    {
      absl::MutexLock lock(&mu_);
      while (!stopped_ && !failed_ && to_receive_.empty()) cv_.Wait(&mu_);
      if (stopped_ || failed_) return;
      seq = to_receive_.front();
      for (const Entry& e : entries_) {
        if (e.op.op_seq() == seq) floats = static_cast<size_t>(e.op.forward().rows_size()) * width_;
      }
    }
    buf.resize(floats);
    const absl::Status st = floats ? transport.Recv(buf, options_.io_timeout)
                                   : absl::InternalError("a linked forward went missing");
    {
      absl::MutexLock lock(&mu_);
      if (stopped_ || failed_) return;
      if (!st.ok()) {
        FailLocked(StrCat("receive: ", st.message()), seq);
      } else {
        TakeReceivedLocked(seq, buf);
      }
    }
    Flush();
    if (!st.ok()) return;
  }
}

void HandoffInbound::TakeReceivedLocked(uint64_t seq, const std::vector<float>& values) {
  to_receive_.pop_front();
  for (Entry& e : entries_) {
    if (e.op.op_seq() != seq || !e.awaiting) continue;
    transport::EncodeRows(values.data(),
                          e.op.forward().rows_size(),
                          width_,
                          v1::DTYPE_F32,
                          e.op.mutable_forward()->mutable_hidden());
    e.awaiting = false;
  }
  v1::PushResponse ack;
  ack.set_link_received(seq);
  replies_.push_back(std::move(ack));
}

void HandoffInbound::FailLocked(const std::string& reason, uint64_t op_seq) {
  if (failed_) return;
  failed_ = true;
  to_receive_.clear();
  if (transport_) transport_->Abort();
  STRATA_LOG(Warning) << "push stream: the hand-off link failed at op " << op_seq << ": " << reason
                      << "; waiting for the payloads over gRPC";
  replies_.push_back(Answer(v1::HandoffAnswer::FAILED, reason));
  cv_.SignalAll();
}

void HandoffInbound::Push(v1::PushRequest msg) {
  bool overflow = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    if (!msg.handoff_closed().empty() && !failed_) {
      failed_ = true;
      to_receive_.clear();
      if (transport_) transport_->Abort();
      STRATA_LOG(Info) << "push stream: the previous hop stopped the hand-off link: "
                       << msg.handoff_closed();
      cv_.SignalAll();
    }
    if (msg.has_late_payload()) TakeLateLocked(msg.late_payload());
    if (msg.has_op()) overflow = TakeOpLocked(std::move(*msg.mutable_op()), msg.hidden_on_link());
  }
  if (overflow) {
    hooks_.close(
        absl::ResourceExhaustedError("too many ops held behind missing hand-off payloads"));
    return;
  }
  Flush();
}

bool HandoffInbound::TakeOpLocked(v1::Op op, bool hidden_on_link) {
  Entry e;
  e.op = std::move(op);
  if (hidden_on_link) {
    const int rows = e.op.has_forward() ? e.op.forward().rows_size() : 0;
    if (rows < 1 || rows > max_rows_) {
      // Cannot know what the link carries for it: the link is out of step. The op goes on as it
      // is, for the worker to refuse.
      FailLocked(StrCat("a linked forward with ", rows, " rows"), e.op.op_seq());
    } else {
      e.awaiting = true;
      if (ready_ && !failed_) {
        to_receive_.push_back(e.op.op_seq());
        cv_.SignalAll();
      } else if (!failed_) {
        FailLocked("a linked forward came before the link was ready", e.op.op_seq());
      }
    }
  }
  entries_.push_back(std::move(e));
  if (entries_.size() <= kMaxHeldOps) return false;
  // Held behind payloads that never come: a broken previous hop; end its stream.
  stopped_ = true;
  entries_.clear();
  if (transport_) transport_->Abort();
  cv_.SignalAll();
  return true;
}

void HandoffInbound::TakeLateLocked(const v1::LatePayload& late) {
  for (Entry& e : entries_) {
    if (e.op.op_seq() != late.op_seq() || !e.awaiting) continue;
    const int64_t rows = e.op.forward().rows_size();
    std::vector<float> values;
    // Anything but exactly rows x width floats is left for the worker to refuse.
    if (transport::DecodeRows(late.hidden(), 1, rows * width_, &values).ok()) {
      transport::EncodeRows(
          values.data(), rows, width_, v1::DTYPE_F32, e.op.mutable_forward()->mutable_hidden());
    }
    e.awaiting = false;
  }
}

void HandoffInbound::Flush() {
  {
    absl::MutexLock lock(&mu_);
    if (flusher_ == std::this_thread::get_id()) {
      // Called from inside one of this thread's own hooks: the running Flush takes what is new
      // once that hook returns (waiting for flush_mu_ here would wait for itself).
      flush_again_ = true;
      return;
    }
  }
  // One flusher at a time keeps replies and deliveries in order. The hooks run without mu_, and
  // what they cause inline on this thread (OnDone -> Stop, a Flush) does not wait for flush_mu_.
  absl::MutexLock flushing(&flush_mu_);
  while (true) {
    std::deque<v1::PushResponse> replies;
    std::vector<v1::Op> ops;
    {
      absl::MutexLock lock(&mu_);
      flusher_ = std::this_thread::get_id();
      flush_again_ = false;
      replies.swap(replies_);
      while (!stopped_ && !entries_.empty() && !entries_.front().awaiting) {
        ops.push_back(std::move(entries_.front().op));
        entries_.pop_front();
      }
    }
    const bool open = RunHooks(replies, ops);
    absl::MutexLock lock(&mu_);
    if (!open || !flush_again_) {
      flusher_ = std::thread::id();
      return;
    }
  }
}

bool HandoffInbound::RunHooks(std::deque<v1::PushResponse>& replies, std::vector<v1::Op>& ops) {
  for (v1::PushResponse& r : replies) hooks_.reply(std::move(r));
  for (v1::Op& op : ops) {
    if (StoppedInHook()) return false;
    if (hooks_.deliver(std::move(op))) continue;
    {
      absl::MutexLock lock(&mu_);
      stopped_ = true;
      entries_.clear();
      if (transport_) transport_->Abort();
      cv_.SignalAll();
    }
    hooks_.close(absl::ResourceExhaustedError("node overloaded: its work queue is full"));
    return false;
  }
  return true;
}

bool HandoffInbound::StoppedInHook() {
  absl::MutexLock lock(&mu_);
  return stopped_in_hook_;
}

void HandoffInbound::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (flusher_ == std::this_thread::get_id()) {
      // Inline from one of Flush's hooks (the stream ended inside it): this thread holds
      // flush_mu_ already. Recording the stop is enough; the flusher acts on it.
      stopped_in_hook_ = true;
      StopLocked();
      return;
    }
  }
  // Waits for a delivery in progress on another thread: none may reach the worker afterwards.
  absl::MutexLock flushing(&flush_mu_);
  absl::MutexLock lock(&mu_);
  StopLocked();
}

void HandoffInbound::StopLocked() {
  stopped_ = true;
  entries_.clear();
  to_receive_.clear();
  if (transport_) transport_->Abort();
  cv_.SignalAll();
}

}  // namespace strata::node
