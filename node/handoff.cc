#include "node/handoff.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/strings.h"
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

// A forward whose hidden states can travel on the link: f32 rows decoded from its tensor.
bool TakePayload(v1::PushRequest& msg, std::vector<float>* payload) {
  if (!msg.has_op() || !msg.op().has_forward()) return false;
  const v1::Forward& f = msg.op().forward();
  if (f.cancelled() || f.rows_size() == 0 || f.hidden().shape_size() != 2) return false;
  if (!transport::DecodeRows(f.hidden(), f.rows_size(), f.hidden().shape(1), payload).ok()) {
    payload->clear();
    return false;
  }
  return true;
}

// The U side of one push stream (see handoff.h). The worker thread calls Send and Close; a
// background thread (only when there is a provider) negotiates, sends linked payloads in order
// and falls back; stream callbacks only queue responses for it.
class HandoffLink final : public DownstreamLink, public std::enable_shared_from_this<HandoffLink> {
 public:
  HandoffLink(HandoffOptions options, std::string address)
      : options_(std::move(options)), address_(std::move(address)) {}

  void Start(const PushStreamFactory& streams, std::function<void(grpc::Status)> on_failed) {
    std::weak_ptr<HandoffLink> weak = weak_from_this();
    inner_ = streams(
        address_,
        [weak](const v1::PushResponse& r) {
          if (auto self = weak.lock()) self->OnResponse(r);
        },
        [weak, on_failed = std::move(on_failed)](grpc::Status status) {
          if (auto self = weak.lock()) self->OnStreamFailed();
          if (on_failed) on_failed(std::move(status));
        });
    if (options_.board) {
      v1::DownstreamLinkInfo info;
      info.set_address(address_);
      info.set_transport("grpc");
      info.set_reason(options_.provider ? "negotiating" : options_.off_reason);
      board_key_ = options_.board->Add(std::move(info));
    }
    if (options_.provider) {
      threaded_ = true;
      std::thread([self = shared_from_this()] { self->Run(); }).detach();
    }
  }

  ~HandoffLink() override {
    if (options_.board && board_key_) options_.board->Remove(board_key_);
  }

  void Send(v1::PushRequest msg) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (board_session_.empty() && !msg.session_id().empty()) {
        board_session_ = msg.session_id();
        if (options_.board) options_.board->SetSession(board_key_, board_session_);
      }
      Item item;
      const bool linked = state_ == State::kLinked && TakePayload(msg, &item.payload);
      if (linked || !queue_.empty() || busy_) {
        item.msg = std::move(msg);
        item.linked = linked;
        queue_.push_back(std::move(item));
        cv_.notify_all();
        return;
      }
    }
    // Only this (the worker) thread queues ops: with nothing queued or being sent, sending
    // directly keeps stream order.
    inner_->Send(std::move(msg));
    std::lock_guard<std::mutex> lock(mu_);
    if (!first_sent_) {
      first_sent_ = true;
      cv_.notify_all();
    }
  }

  void Close() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (threaded_ && !thread_done_) {
        Item item;
        item.close = true;
        queue_.push_back(std::move(item));
        cv_.notify_all();
        return;
      }
    }
    inner_->Close();
    if (options_.board && board_key_) options_.board->Remove(board_key_);
  }

 private:
  enum class State { kNegotiating, kLinked, kGrpc };
  struct Item {
    v1::PushRequest msg;
    std::vector<float> payload;
    bool linked = false;
    bool close = false;
  };

  void OnResponse(const v1::PushResponse& r) {
    std::lock_guard<std::mutex> lock(mu_);
    responses_.push_back(r);
    cv_.notify_all();
  }

  void OnStreamFailed() {
    std::lock_guard<std::mutex> lock(mu_);
    stream_failed_ = true;
    cv_.notify_all();
  }

  // Waits for a HandoffAnswer in `wanted` (others are consumed); false after `deadline`, when
  // the stream failed or the link was closed.
  bool WaitAnswer(absl::Time deadline, v1::HandoffAnswer* answer) {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      while (!responses_.empty()) {
        v1::PushResponse r = std::move(responses_.front());
        responses_.pop_front();
        if (r.has_handoff()) {
          *answer = r.handoff();
          return true;
        }
      }
      if (stream_failed_ || ClosingLocked()) return false;
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      cv_.wait_for(lock, absl::ToChronoMilliseconds(std::min(left, absl::Milliseconds(50))));
    }
  }

  bool ClosingLocked() const {
    for (const Item& item : queue_) {
      if (item.close) return true;
    }
    return false;
  }

  void Run() {
    Negotiate();
    Serve();
    if (holds_budget_) options_.budget->Give();
    holds_budget_ = false;
    // Exits after Close (or a failed stream); the link object lives while the session holds it.
    std::lock_guard<std::mutex> lock(mu_);
    thread_done_ = true;
  }

  void Negotiate() {
    if (!options_.budget->TryTake()) {
      return Fallback(
          StrCat("no offer: ", options_.budget->limit(), " hand-off links are open already"),
          false);
    }
    holds_budget_ = true;
    absl::StatusOr<v1::HandoffOffer> offer = options_.provider->Offer();
    if (!offer.ok()) return Fallback(StrCat("no offer: ", offer.status().message()), false);
    {
      // The offer may not be the stream's first message (that one names the session).
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return first_sent_ || stream_failed_ || ClosingLocked(); });
      if (!first_sent_) return Fallback("the stream ended before the offer", false);
    }
    v1::PushRequest msg;
    *msg.mutable_handoff_offer() = *offer;
    inner_->Send(std::move(msg));
    Report("grpc", StrCat(offer->transport(), " offered"));
    v1::HandoffAnswer answer;
    if (!WaitAnswer(absl::Now() + options_.connect_timeout, &answer)) {
      return Fallback("the next hop did not answer the offer", false);
    }
    if (answer.state() != v1::HandoffAnswer::ACCEPTED) {
      return Fallback(StrCat("the next hop declined: ", answer.reason()), false);
    }
    absl::StatusOr<std::unique_ptr<HandoffTransport>> t =
        options_.provider->Connect(*offer, /*offering=*/true, options_.connect_timeout);
    if (!t.ok()) return Fallback(StrCat("connect: ", t.status().message()), true);
    transport_ = std::move(*t);
    if (!WaitAnswer(absl::Now() + options_.connect_timeout, &answer)) {
      return Fallback("the next hop did not confirm the link", true);
    }
    if (answer.state() != v1::HandoffAnswer::READY) {
      return Fallback(StrCat("the next hop failed to connect: ", answer.reason()), false);
    }
    transport_name_ = offer->transport();
    {
      std::lock_guard<std::mutex> lock(mu_);
      state_ = State::kLinked;
    }
    Report(transport_name_, "");
    STRATA_LOG(Info) << "push stream to " << address_ << " (session " << board_session_
                     << "): forward payloads go over " << transport_name_;
  }

  // Sends queued items in order until Close, a failed stream, or a fallback with nothing left to
  // send.
  void Serve() {
    while (true) {
      Item item;
      std::string failure;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (state_ == State::kGrpc && queue_.empty()) {
          // On gRPC for good with nothing queued: the worker sends (and closes) directly now.
          thread_done_ = true;
          return;
        }
        cv_.wait(lock, [&] { return !queue_.empty() || !responses_.empty() || stream_failed_; });
        if (stream_failed_) return;
        failure = TakeResponsesLocked();
        if (failure.empty() && !queue_.empty()) {
          item = std::move(queue_.front());
          queue_.pop_front();
          busy_ = true;
        }
      }
      if (!failure.empty()) Fallback(StrCat("the next hop's link failed: ", failure), false);
      if (item.close) {
        inner_->Close();
        if (options_.board && board_key_) options_.board->Remove(board_key_);
        return;
      }
      SendItem(item);
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
  }

  // Applies acknowledgements; returns the next hop's failure reason, if it reported one.
  std::string TakeResponsesLocked() {
    std::string failure;
    while (!responses_.empty()) {
      const v1::PushResponse& r = responses_.front();
      if (r.link_received() != 0) unacked_.erase(r.link_received());
      if (r.has_handoff() && r.handoff().state() == v1::HandoffAnswer::FAILED &&
          state_ == State::kLinked) {
        failure = r.handoff().reason().empty() ? "unknown" : r.handoff().reason();
      }
      responses_.pop_front();
    }
    return failure;
  }

  void SendItem(Item& item) {
    const bool linked = item.linked && state_ == State::kLinked;
    if (!linked) {
      if (item.linked) SetHidden(item.msg.mutable_op(), item.payload);
      inner_->Send(std::move(item.msg));
      return;
    }
    if (!WaitForRoom()) Fallback("the next hop stopped acknowledging payloads", true);
    if (state_ != State::kLinked) {  // it fell back meanwhile
      SetHidden(item.msg.mutable_op(), item.payload);
      inner_->Send(std::move(item.msg));
      return;
    }
    const uint64_t seq = item.msg.op().op_seq();
    item.msg.mutable_op()->mutable_forward()->clear_hidden();
    item.msg.set_hidden_on_link(true);
    inner_->Send(std::move(item.msg));
    const absl::Status st = transport_->Send(item.payload, options_.io_timeout);
    unacked_.emplace(seq, std::move(item.payload));
    if (st.ok()) {
      ++payloads_;
      if (options_.board) options_.board->CountPayload(board_key_);
    } else {
      Fallback(StrCat("send: ", st.message()), true);
    }
  }

  // Waits until fewer than max_unacked payloads await an acknowledgement.
  bool WaitForRoom() {
    const absl::Time deadline = absl::Now() + options_.io_timeout;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      const std::string failure = TakeResponsesLocked();
      if (!failure.empty()) {
        lock.unlock();
        Fallback(StrCat("the next hop's link failed: ", failure), false);
        return true;  // state_ is gRPC now: the caller's item goes plain
      }
      if (unacked_.size() < options_.max_unacked) return true;
      if (stream_failed_ || absl::Now() >= deadline) return false;
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }

  static void SetHidden(v1::Op* op, const std::vector<float>& payload) {
    const int64_t rows = op->forward().rows_size();
    transport::EncodeRows(payload.data(),
                          rows,
                          rows ? static_cast<int64_t>(payload.size()) / rows : 0,
                          v1::DTYPE_F32,
                          op->mutable_forward()->mutable_hidden());
  }

  // Ends the link for good: every payload the next hop has not confirmed is sent again over
  // gRPC; later forwards go plain. `notify`: tell the next hop (the failure was on this side).
  void Fallback(const std::string& reason, bool notify) {
    const bool was_linked = state_ == State::kLinked;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == State::kGrpc) return;
      state_ = State::kGrpc;
    }
    if (notify) {
      v1::PushRequest closed;
      closed.set_handoff_closed(reason);
      inner_->Send(std::move(closed));
    }
    for (auto& [seq, payload] : unacked_) {
      v1::PushRequest late;
      late.mutable_late_payload()->set_op_seq(seq);
      const int64_t n = static_cast<int64_t>(payload.size());
      // The row count is the next hop's to check: it knows the op's rows and its own width.
      transport::EncodeRows(
          payload.data(), 1, n, v1::DTYPE_F32, late.mutable_late_payload()->mutable_hidden());
      inner_->Send(std::move(late));
    }
    const size_t resent = unacked_.size();
    unacked_.clear();
    if (transport_) {
      transport_->Abort();
      transport_.reset();
    }
    if (holds_budget_) options_.budget->Give();
    holds_budget_ = false;
    Report("grpc", reason);
    if (was_linked) {
      STRATA_LOG(Warning) << "push stream to " << address_ << " (session " << board_session_
                          << "): forward payloads go over gRPC: " << reason
                          << (resent ? StrCat(" (", resent, " payloads sent again)") : "");
    } else {
      STRATA_LOG(Info) << "push stream to " << address_ << " (session " << board_session_
                       << "): gRPC only: " << reason;
    }
  }

  void Report(const std::string& transport, const std::string& reason) {
    if (options_.board && board_key_) options_.board->Update(board_key_, transport, reason);
  }

  const HandoffOptions options_;
  const std::string address_;
  std::shared_ptr<DownstreamLink> inner_;
  uint64_t board_key_ = 0;
  bool threaded_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kNegotiating;       // written under mu_ by the link thread
  std::deque<Item> queue_;                  // guarded by mu_
  std::deque<v1::PushResponse> responses_;  // guarded by mu_
  bool busy_ = false;                       // the link thread is sending an item; guarded by mu_
  bool first_sent_ = false;                 // guarded by mu_
  bool stream_failed_ = false;              // guarded by mu_
  bool thread_done_ = false;                // guarded by mu_
  std::string board_session_;               // guarded by mu_ (set once by the worker thread)

  // Link thread only.
  std::unique_ptr<HandoffTransport> transport_;
  std::string transport_name_;
  std::map<uint64_t, std::vector<float>> unacked_;
  int64_t payloads_ = 0;
  bool holds_budget_ = false;
};

}  // namespace

std::string HostIdentity() {
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return StrCat(boot, "/", host);
}

// --- LinkBoard ---

uint64_t LinkBoard::Add(v1::DownstreamLinkInfo info) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t key = next_++;
  links_[key] = std::move(info);
  return key;
}

void LinkBoard::Update(uint64_t key, const std::string& transport, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(key);
  if (it == links_.end()) return;
  it->second.set_transport(transport);
  it->second.set_reason(reason);
}

void LinkBoard::SetSession(uint64_t key, const std::string& session_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(key);
  if (it != links_.end()) it->second.set_session_id(session_id);
}

void LinkBoard::CountPayload(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(key);
  if (it != links_.end()) it->second.set_link_payloads(it->second.link_payloads() + 1);
}

void LinkBoard::Remove(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  links_.erase(key);
}

std::vector<v1::DownstreamLinkInfo> LinkBoard::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::DownstreamLinkInfo> out;
  for (const auto& [key, info] : links_) out.push_back(info);
  return out;
}

std::map<std::string, int> LinkBoard::Counts() const {
  std::map<std::string, int> out;
  for (const v1::DownstreamLinkInfo& info : Snapshot()) ++out[info.transport()];
  return out;
}

std::string LinkBoard::Summary() const {
  std::string out;
  for (const auto& [transport, n] : Counts()) {
    out += StrCat(out.empty() ? "links " : ", ", transport, " ", n);
  }
  return out;
}

DownstreamFactory HandoffDownstreamFactory(HandoffOptions options, PushStreamFactory streams) {
  return [options = std::move(options), streams = std::move(streams)](
             const std::string& address, std::function<void(grpc::Status)> on_failed) {
    auto link = std::make_shared<HandoffLink>(options, address);
    link->Start(streams, std::move(on_failed));
    return std::shared_ptr<DownstreamLink>(link);
  };
}

// --- HandoffInbound ---

HandoffInbound::HandoffInbound(const HandoffOptions& options, int width, int max_rows, Hooks hooks)
    : options_(options), width_(width), max_rows_(max_rows), hooks_(std::move(hooks)) {}

HandoffInbound::~HandoffInbound() = default;

std::shared_ptr<HandoffInbound> HandoffInbound::Start(
    const HandoffOptions& options, v1::HandoffOffer offer, int width, int max_rows, Hooks hooks) {
  auto in = std::shared_ptr<HandoffInbound>(
      new HandoffInbound(options, width, max_rows, std::move(hooks)));
  // The first reply, whichever thread flushes first: READY or FAILED can only follow it.
  {
    std::lock_guard<std::mutex> lock(in->mu_);
    in->replies_.push_back(Answer(v1::HandoffAnswer::ACCEPTED));
  }
  std::thread([in, offer = std::move(offer)] {
    in->Flush();
    in->Run(offer);
  }).detach();
  return in;
}

void HandoffInbound::Run(v1::HandoffOffer offer) {
  // The stream's accept took a share of the budget; this thread gives it back however it ends.
  struct GiveBack {
    LinkBudget* budget;
    ~GiveBack() { budget->Give(); }
  } give_back{options_.budget.get()};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;  // the stream ended before the connect began
  }
  absl::StatusOr<std::unique_ptr<HandoffTransport>> t =
      options_.provider->Connect(offer, /*offering=*/false, options_.connect_timeout);
  std::shared_ptr<HandoffTransport> transport;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) {
      if (t.ok()) (*t)->Abort();
      return;
    }
    if (!t.ok()) {
      if (!failed_) {
        failed_ = true;
        STRATA_LOG(Info) << "push stream from " << offer.node_id()
                         << ": gRPC only: connect: " << t.status().message();
        replies_.push_back(
            Answer(v1::HandoffAnswer::FAILED, StrCat("connect: ", t.status().message())));
      }
    } else {
      transport = transport_ = std::move(*t);
      if (failed_) {
        transport->Abort();  // the previous hop gave up meanwhile
      } else {
        ready_ = true;
        replies_.push_back(Answer(v1::HandoffAnswer::READY));
      }
    }
  }
  Flush();
  if (!transport) return;
  std::vector<float> buf;
  while (true) {
    uint64_t seq = 0;
    size_t floats = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopped_ || failed_ || !to_receive_.empty(); });
      if (stopped_ || failed_) break;
      seq = to_receive_.front();
      for (const Entry& e : entries_) {
        if (e.op.op_seq() == seq) floats = static_cast<size_t>(e.op.forward().rows_size()) * width_;
      }
    }
    buf.resize(floats);
    const absl::Status st = floats ? transport->Recv(buf, options_.io_timeout)
                                   : absl::InternalError("a linked forward went missing");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_ || failed_) break;
      if (!st.ok()) {
        FailLocked(StrCat("receive: ", st.message()), seq);
      } else {
        to_receive_.pop_front();
        for (Entry& e : entries_) {
          if (e.op.op_seq() != seq || !e.awaiting) continue;
          transport::EncodeRows(buf.data(),
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
    }
    Flush();
    if (!st.ok()) break;
  }
  transport->Abort();
}

void HandoffInbound::FailLocked(const std::string& reason, uint64_t op_seq) {
  if (failed_) return;
  failed_ = true;
  to_receive_.clear();
  if (transport_) transport_->Abort();
  STRATA_LOG(Warning) << "push stream: the hand-off link failed at op " << op_seq << ": " << reason
                      << "; waiting for the payloads over gRPC";
  replies_.push_back(Answer(v1::HandoffAnswer::FAILED, reason));
  cv_.notify_all();
}

void HandoffInbound::Push(v1::PushRequest msg) {
  bool overflow = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    if (!msg.handoff_closed().empty() && !failed_) {
      failed_ = true;
      to_receive_.clear();
      if (transport_) transport_->Abort();
      STRATA_LOG(Info) << "push stream: the previous hop stopped the hand-off link: "
                       << msg.handoff_closed();
      cv_.notify_all();
    }
    if (msg.has_late_payload()) TakeLateLocked(msg.late_payload());
    if (msg.has_op()) {
      Entry e;
      e.op = std::move(*msg.mutable_op());
      if (msg.hidden_on_link()) {
        const int rows = e.op.has_forward() ? e.op.forward().rows_size() : 0;
        if (rows < 1 || rows > max_rows_) {
          // Cannot know what the link carries for it: the link is out of step. The op goes on
          // as it is, for the worker to refuse.
          FailLocked(StrCat("a linked forward with ", rows, " rows"), e.op.op_seq());
        } else {
          e.awaiting = true;
          if (ready_ && !failed_) {
            to_receive_.push_back(e.op.op_seq());
            cv_.notify_all();
          } else if (!failed_) {
            FailLocked("a linked forward came before the link was ready", e.op.op_seq());
          }
        }
      }
      entries_.push_back(std::move(e));
      if (entries_.size() > kMaxHeldOps) {
        // Held behind payloads that never come: a broken previous hop; end its stream.
        stopped_ = true;
        entries_.clear();
        if (transport_) transport_->Abort();
        cv_.notify_all();
        overflow = true;
      }
    }
  }
  if (overflow) {
    hooks_.close(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "too many ops held behind missing hand-off payloads"));
    return;
  }
  Flush();
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
  // One flusher at a time keeps replies and deliveries in order; the hooks run without mu_, so
  // a stream reaction they cause inline (e.g. OnDone -> Stop) cannot deadlock.
  std::lock_guard<std::recursive_mutex> flushing(flush_mu_);
  std::deque<v1::PushResponse> replies;
  std::vector<v1::Op> ops;
  {
    std::lock_guard<std::mutex> lock(mu_);
    replies.swap(replies_);
    while (!stopped_ && !entries_.empty() && !entries_.front().awaiting) {
      ops.push_back(std::move(entries_.front().op));
      entries_.pop_front();
    }
  }
  for (v1::PushResponse& r : replies) hooks_.reply(std::move(r));
  for (v1::Op& op : ops) {
    if (hooks_.deliver(std::move(op))) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      entries_.clear();
      if (transport_) transport_->Abort();
      cv_.notify_all();
    }
    hooks_.close(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "node overloaded: its work queue is full"));
    return;
  }
}

void HandoffInbound::Stop() {
  // Waits for a delivery in progress on another thread: none may reach the worker afterwards.
  std::lock_guard<std::recursive_mutex> flushing(flush_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  entries_.clear();
  to_receive_.clear();
  if (transport_) transport_->Abort();
  cv_.notify_all();
}

}  // namespace strata::node
