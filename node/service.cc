#include "node/service.h"

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/strings.h"
#include "node/streams.h"
#include "transport/channels.h"

namespace strata::node {
namespace {

absl::Status Overloaded() {
  return absl::ResourceExhaustedError("node overloaded: its work queue is full");
}

// The server side of a client's Session stream.
class SessionReactor final
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  explicit SessionReactor(Worker* worker) : worker_(worker) {
    link_ = std::make_shared<Link>(this);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed, went away, or sent bytes that do not parse
      if (opened_) {
        if (!worker_->PostClientGone(session_id_)) link_->Close(Overloaded());
      } else {
        link_->Close(absl::InvalidArgumentError("the stream ended before a valid `open` message"));
      }
      return;
    }
    if (!opened_) {
      if (!request_.has_open()) {
        link_->Close(absl::InvalidArgumentError("the first message of a session must be `open`"));
        return;
      }
      opened_ = true;
      session_id_ = request_.open().session_id();
      if (!worker_->PostOpen(link_, std::move(*request_.mutable_open()))) {
        link_->Close(Overloaded());
        return;
      }
    } else if (request_.has_op()) {
      if (!worker_->PostClientOp(session_id_, std::move(*request_.mutable_op()))) {
        link_->Close(Overloaded());
        return;
      }
    } else if (request_.has_cancel()) {
      for (uint64_t seq : request_.cancel().op_seqs()) worker_->Cancel(session_id_, seq);
    } else if (request_.has_state()) {
      if (!worker_->PostStateRequest(session_id_)) {
        link_->Close(Overloaded());
        return;
      }
    } else {
      link_->Close(absl::InvalidArgumentError("the session is already open"));
      return;
    }
    request_.Clear();
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override { link_->outbox.WriteDone(ok); }

  void OnDone() override {
    link_->outbox.Gone();
    delete this;
  }

 private:
  struct Link : ClientLink {
    explicit Link(SessionReactor* r)
        : outbox([r](const v1::SessionResponse* m) { r->StartWrite(m); },
                 [r](grpc::Status s) { r->Finish(std::move(s)); }) {}
    void Send(v1::SessionResponse msg) override { outbox.Send(std::move(msg)); }
    void Close(absl::Status status) override { outbox.Close(ToGrpcStatus(status)); }
    Outbox<v1::SessionResponse> outbox;
  };

  Worker* worker_;
  std::shared_ptr<Link> link_;
  v1::SessionRequest request_;
  bool opened_ = false;
  std::string session_id_;
};

// The server side of a Push stream from the previous hop.
//
// A hand-off offer is taken only on a stream the worker accepted: it is posted to the worker
// behind the stream's PushOpen, and the worker thread answers it (TakeOffer) once it knows. Until
// an offer is accepted, ops go to the worker directly; afterwards through the link's inbound
// side. This reactor reads the stream one message at a time, so an op posted directly is queued
// before any op that follows it through the inbound side.
class PushReactor final : public grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse> {
 public:
  PushReactor(Worker* worker, const HandoffOptions* handoff) : worker_(worker), handoff_(handoff) {
    link_ = std::make_shared<Link>(this);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (!started_) {
        link_->Close(
            absl::InvalidArgumentError("the push stream ended before a valid first message"));
      } else if (!worker_->PostPushGone(session_id_, link_)) {
        link_->Close(Overloaded());
      }
      return;
    }
    if (!started_) {
      started_ = true;
      session_id_ = request_.session_id();
      if (session_id_.empty()) {
        link_->Close(absl::InvalidArgumentError("the first push message must name the session"));
        return;
      }
      if (!worker_->PostPushOpen(link_, session_id_, request_.token())) {
        link_->Close(Overloaded());
        return;
      }
    }
    if (request_.has_handoff_offer() && !PostOffer(std::move(*request_.mutable_handoff_offer()))) {
      link_->Close(Overloaded());
      return;
    }
    if (std::shared_ptr<HandoffInbound> inbound = link_->Inbound()) {
      // Once a link was accepted, every message goes through it in arrival order.
      inbound->Push(std::move(request_));
    } else if (request_.has_op() &&
               !worker_->PostPushOp(session_id_, link_.get(), std::move(*request_.mutable_op()))) {
      link_->Close(Overloaded());
      return;
    }
    request_.Clear();
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override { link_->outbox.WriteDone(ok); }

  void OnDone() override {
    std::shared_ptr<HandoffInbound> inbound = link_->End();
    if (inbound) inbound->Stop();
    link_->outbox.Gone();
    delete this;
  }

 private:
  // The stream's side shared with the worker (which holds the stream as its UpstreamLink) and
  // with the answer to an offer, which runs on the worker thread.
  struct Link : UpstreamLink {
    explicit Link(PushReactor* r)
        : outbox([r](const v1::PushResponse* m) { r->StartWrite(m); },
                 [r](grpc::Status s) { r->Finish(std::move(s)); }) {}
    void Close(absl::Status status) override { outbox.Close(ToGrpcStatus(status)); }

    std::shared_ptr<HandoffInbound> Inbound() {
      absl::MutexLock lock(&mu);
      return inbound;
    }
    // The stream is done: no offer is taken any more; returns the inbound side to stop.
    std::shared_ptr<HandoffInbound> End() {
      absl::MutexLock lock(&mu);
      ended = true;
      return std::move(inbound);
    }

    Outbox<v1::PushResponse> outbox;
    // Never held while sending or closing: a stream reaction may run inline and take it.
    absl::Mutex mu;
    std::shared_ptr<HandoffInbound> inbound ABSL_GUARDED_BY(mu);  // after an accepted offer
    bool ended ABSL_GUARDED_BY(mu) = false;                       // OnDone ran
  };

  // What answering an offer needs, kept alive by the worker's event (the reactor may be gone).
  struct OfferContext {
    Worker* worker;
    const HandoffOptions* handoff;
    std::shared_ptr<Link> link;
    std::string session_id;
  };

  bool PostOffer(v1::HandoffOffer offer) {
    OfferContext c{worker_, handoff_, link_, session_id_};
    return worker_->PostPushOffer(
        session_id_, link_.get(), [c = std::move(c), offer = std::move(offer)](bool accepted) {
          TakeOffer(c, offer, accepted);
        });
  }

  // On the worker thread: `stream_accepted` says whether the worker accepted this stream.
  static void TakeOffer(const OfferContext& c,
                        const v1::HandoffOffer& offer,
                        bool stream_accepted) {
    auto decline = [&](const std::string& reason) {
      v1::PushResponse r;
      r.mutable_handoff()->set_state(v1::HandoffAnswer::DECLINED);
      r.mutable_handoff()->set_reason(reason);
      c.link->outbox.Send(std::move(r));  // a refused stream is closed already: dropped
    };
    if (!stream_accepted) return decline("the push stream was not accepted");
    if (c.link->Inbound()) return decline("this stream has a link already");
    if (!c.handoff->provider) return decline(c.handoff->off_reason);
    const absl::Status can = c.handoff->provider->CanAccept(offer);
    if (!can.ok()) {
      STRATA_LOG(Info) << "push stream from " << offer.node_id() << " (session " << c.session_id
                       << "): declined a " << offer.transport() << " link: " << can.message();
      return decline(std::string(can.message()));
    }
    HandoffInbound::Hooks hooks;
    hooks.deliver = [worker = c.worker, id = c.session_id, link = c.link](v1::Op op) {
      return worker->PostPushOp(id, link.get(), std::move(op));
    };
    hooks.reply = [link = c.link](v1::PushResponse r) { link->outbox.Send(std::move(r)); };
    hooks.close = [link = c.link](absl::Status status) { link->Close(std::move(status)); };
    {
      // Set under the lock, so that the reactor hands every message after the answer to it.
      Link& link = *c.link;
      absl::MutexLock lock(&link.mu);
      if (link.ended) return;  // nobody left to answer; nothing taken
      if (c.handoff->budget->TryTake()) {
        // Answers ACCEPTED itself (on its thread), before READY or FAILED.
        link.inbound = HandoffInbound::Start(*c.handoff,
                                             offer,
                                             c.worker->hidden_size(),
                                             c.worker->options().max_rows_per_op,
                                             std::move(hooks));
        return;
      }
    }
    decline(StrCat(c.handoff->budget->limit(), " hand-off links are open already"));
  }

  Worker* worker_;
  const HandoffOptions* handoff_;
  std::shared_ptr<Link> link_;
  v1::PushRequest request_;
  bool started_ = false;
  std::string session_id_;
};

// The client side of a Push stream to the next hop. Kept alive by the session's reference and,
// until the call completes, by itself.
//
// The worker thread writes (and half-closes) while the call may be ending on a gRPC thread. gRPC
// ends the call (and destroys its side) before OnDone, so a write started in between would touch
// a finished call: a hold keeps the call from ending until no write can be started any more,
// that is once the stream is half-closed or the next hop ended it.
class DownstreamStream final : public grpc::ClientBidiReactor<v1::PushRequest, v1::PushResponse>,
                               public DownstreamLink,
                               public std::enable_shared_from_this<DownstreamStream> {
 public:
  DownstreamStream(std::function<void(const v1::PushResponse&)> on_response,
                   std::function<void(absl::Status)> on_failed)
      : on_response_(std::move(on_response)),
        on_failed_(std::move(on_failed)),
        outbox_([this](const v1::PushRequest* m) { StartWrite(m); },
                [this](grpc::Status) {
                  StartWritesDone();
                  ReleaseHold();  // nothing is written after the half-close
                }) {}

  void Start(std::shared_ptr<grpc::Channel> channel) {
    self_ = shared_from_this();
    stub_ = v1::Node::NewStub(std::move(channel));
    // Sessions can live for hours; idle sessions are closed by the nodes long before this.
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(24));
    stub_->async()->Push(&context_, this);
    AddHold();
    StartRead(&response_);
    StartCall();
  }

  void Send(v1::PushRequest msg) override { outbox_.Send(std::move(msg)); }
  void Close() override {
    closed_ = true;
    outbox_.Close(grpc::Status::OK);
  }

  void OnWriteDone(bool ok) override { outbox_.WriteDone(ok); }
  void OnWritesDoneDone(bool) override {}
  void OnReadDone(bool ok) override {
    if (!ok) {
      // The next hop ended the stream: no write may start any more (waits for one being
      // started), then the call may end.
      outbox_.Gone();
      ReleaseHold();
      return;
    }
    if (on_response_) on_response_(response_);
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    outbox_.Gone();
    // OK: the next hop ended its session (its client closed it, as every hop is told at once
    // when a chain closes), which is no failure of the link.
    if (!closed_ && on_failed_) on_failed_(FromGrpcStatus(status));
    self_.reset();  // may destroy this
  }

 private:
  void ReleaseHold() {
    if (!hold_released_.exchange(true)) RemoveHold();
  }

  std::function<void(const v1::PushResponse&)> on_response_;
  std::function<void(absl::Status)> on_failed_;
  Outbox<v1::PushRequest> outbox_;
  std::unique_ptr<v1::Node::Stub> stub_;
  grpc::ClientContext context_;
  v1::PushResponse response_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> hold_released_{false};
  std::shared_ptr<DownstreamStream> self_;
};

}  // namespace

NodeService::NodeService(Worker* worker,
                         std::function<void(v1::NodeInfo*)> info,
                         HandoffOptions handoff)
    : worker_(worker), info_(std::move(info)), handoff_(std::move(handoff)) {}

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* NodeService::Session(
    grpc::CallbackServerContext*) {
  return new SessionReactor(worker_);
}

grpc::ServerBidiReactor<v1::PushRequest, v1::PushResponse>* NodeService::Push(
    grpc::CallbackServerContext*) {
  return new PushReactor(worker_, &handoff_);
}

grpc::ServerUnaryReactor* NodeService::Info(grpc::CallbackServerContext* context,
                                            const v1::InfoRequest*,
                                            v1::NodeInfo* response) {
  info_(response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

DownstreamFactory GrpcDownstreamFactory(HandoffOptions handoff) {
  return HandoffDownstreamFactory(std::move(handoff),
                                  [](const std::string& address,
                                     std::function<void(const v1::PushResponse&)> on_response,
                                     std::function<void(absl::Status)> on_failed) {
                                    auto stream = std::make_shared<DownstreamStream>(
                                        std::move(on_response), std::move(on_failed));
                                    stream->Start(transport::ChannelCache::Default().Get(address));
                                    return std::shared_ptr<DownstreamLink>(stream);
                                  });
}

}  // namespace strata::node
