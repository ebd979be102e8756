#include "node/handoff_outbound.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::node {
namespace {

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

}  // namespace

DownstreamFactory HandoffDownstreamFactory(HandoffOptions options, PushStreamFactory streams) {
  STRATA_CHECK(options.threads != nullptr || !options.provider)
      << "a hand-off provider needs a thread set";
  return [options = std::move(options), streams = std::move(streams)](
             const std::string& address, std::function<void(absl::Status)> on_failed) {
    auto link = std::make_shared<HandoffOutbound>(options, address);
    link->Start(streams, std::move(on_failed));
    return std::shared_ptr<DownstreamLink>(link);
  };
}

HandoffOutbound::HandoffOutbound(HandoffOptions options, std::string address)
    : options_(std::move(options)), address_(std::move(address)) {}

HandoffOutbound::~HandoffOutbound() {
  if (options_.board && board_key_) options_.board->Remove(board_key_);
}

void HandoffOutbound::Start(const PushStreamFactory& streams,
                            std::function<void(absl::Status)> on_failed) {
  std::weak_ptr<HandoffOutbound> weak = weak_from_this();
  inner_ = streams(
      address_,
      [weak](const v1::PushResponse& r) {
        if (auto self = weak.lock()) self->OnResponse(r);
      },
      [weak, on_failed = std::move(on_failed)](absl::Status status) {
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
    options_.threads->Start([self = shared_from_this()] { self->Run(); });
  }
}

void HandoffOutbound::Send(v1::PushRequest msg) {
  {
    absl::MutexLock lock(&mu_);
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
      cv_.SignalAll();
      return;
    }
  }
  // Only this (the worker) thread queues ops: with nothing queued or being sent, sending
  // directly keeps stream order.
  inner_->Send(std::move(msg));
  absl::MutexLock lock(&mu_);
  if (!first_sent_) {
    first_sent_ = true;
    cv_.SignalAll();
  }
}

void HandoffOutbound::Close() {
  {
    absl::MutexLock lock(&mu_);
    if (threaded_ && !thread_done_) {
      Item item;
      item.close = true;
      queue_.push_back(std::move(item));
      cv_.SignalAll();
      return;
    }
  }
  inner_->Close();
  if (options_.board && board_key_) options_.board->Remove(board_key_);
}

void HandoffOutbound::OnResponse(const v1::PushResponse& r) {
  absl::MutexLock lock(&mu_);
  responses_.push_back(r);
  cv_.SignalAll();
}

void HandoffOutbound::OnStreamFailed() {
  absl::MutexLock lock(&mu_);
  stream_failed_ = true;
  cv_.SignalAll();
}

bool HandoffOutbound::WaitAnswer(absl::Time deadline, v1::HandoffAnswer* answer) {
  absl::MutexLock lock(&mu_);
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
    cv_.WaitWithTimeout(&mu_, std::min(left, absl::Milliseconds(50)));
  }
}

bool HandoffOutbound::ClosingLocked() const {
  for (const Item& item : queue_) {
    if (item.close) return true;
  }
  return false;
}

void HandoffOutbound::Run() {
  Negotiate();
  Serve();
  if (holds_budget_) options_.budget->Give();
  holds_budget_ = false;
  // Exits after Close (or a failed stream); the link object lives while the session holds it.
  absl::MutexLock lock(&mu_);
  thread_done_ = true;
}

void HandoffOutbound::Negotiate() {
  if (!options_.budget->TryTake()) {
    return Fallback(
        StrCat("no offer: ", options_.budget->limit(), " hand-off links are open already"), false);
  }
  holds_budget_ = true;
  absl::StatusOr<v1::HandoffOffer> offer = options_.provider->Offer();
  if (!offer.ok()) return Fallback(StrCat("no offer: ", offer.status().message()), false);
  bool first_sent = false;
  {
    // The offer may not be the stream's first message (that one names the session).
    absl::MutexLock lock(&mu_);
    while (!first_sent_ && !stream_failed_ && !ClosingLocked()) cv_.Wait(&mu_);
    first_sent = first_sent_;
  }
  if (!first_sent) return Fallback("the stream ended before the offer", false);
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
    absl::MutexLock lock(&mu_);
    state_ = State::kLinked;
  }
  Report(transport_name_, "");
  STRATA_LOG(Info) << "push stream to " << address_ << " (session " << SessionForLog()
                   << "): forward payloads go over " << transport_name_;
}

void HandoffOutbound::Serve() {
  while (true) {
    Item item;
    std::string failure;
    {
      absl::MutexLock lock(&mu_);
      if (state_ == State::kGrpc && queue_.empty()) {
        // On gRPC for good with nothing queued: the worker sends (and closes) directly now.
        thread_done_ = true;
        return;
      }
      while (queue_.empty() && responses_.empty() && !stream_failed_) cv_.Wait(&mu_);
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
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

std::string HandoffOutbound::TakeResponsesLocked() {
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

void HandoffOutbound::SendItem(Item& item) {
  const bool linked = item.linked && OwnState() == State::kLinked;
  if (!linked) {
    if (item.linked) SetHidden(item.msg.mutable_op(), item.payload);
    inner_->Send(std::move(item.msg));
    return;
  }
  if (!WaitForRoom()) Fallback("the next hop stopped acknowledging payloads", true);
  if (OwnState() != State::kLinked) {  // it fell back meanwhile
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
    if (options_.board) options_.board->CountPayload(board_key_);
  } else {
    Fallback(StrCat("send: ", st.message()), true);
  }
}

bool HandoffOutbound::WaitForRoom() {
  const absl::Time deadline = absl::Now() + options_.io_timeout;
  std::string failure;
  {
    absl::MutexLock lock(&mu_);
    while (true) {
      failure = TakeResponsesLocked();
      if (!failure.empty()) break;
      if (unacked_.size() < options_.max_unacked) return true;
      if (stream_failed_ || absl::Now() >= deadline) return false;
      cv_.WaitWithTimeout(&mu_, absl::Milliseconds(10));
    }
  }
  Fallback(StrCat("the next hop's link failed: ", failure), false);
  return true;  // state_ is gRPC now: the caller's item goes plain
}

void HandoffOutbound::SetHidden(v1::Op* op, const std::vector<float>& payload) {
  const int64_t rows = op->forward().rows_size();
  transport::EncodeRows(payload.data(),
                        rows,
                        rows ? static_cast<int64_t>(payload.size()) / rows : 0,
                        v1::DTYPE_F32,
                        op->mutable_forward()->mutable_hidden());
}

void HandoffOutbound::Fallback(const std::string& reason, bool notify) {
  const bool was_linked = OwnState() == State::kLinked;
  {
    absl::MutexLock lock(&mu_);
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
    STRATA_LOG(Warning) << "push stream to " << address_ << " (session " << SessionForLog()
                        << "): forward payloads go over gRPC: " << reason
                        << (resent ? StrCat(" (", resent, " payloads sent again)") : "");
  } else {
    STRATA_LOG(Info) << "push stream to " << address_ << " (session " << SessionForLog()
                     << "): gRPC only: " << reason;
  }
}

void HandoffOutbound::Report(const std::string& transport, const std::string& reason) {
  if (options_.board && board_key_) options_.board->Update(board_key_, transport, reason);
}

std::string HandoffOutbound::SessionForLog() {
  absl::MutexLock lock(&mu_);
  return board_session_;
}

}  // namespace strata::node
