// The worker's thread, its queue and the events it handles: sessions opening and closing, push
// streams from previous hops (held until their session opens), ops taken in order, idle expiry.
#include "node/worker.h"

#include <iterator>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::node {
namespace {

constexpr size_t kMaxSessionIdBytes = 128;
constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_1;

v1::SessionResponse ErrorResponse(uint64_t op_seq, const absl::Status& status) {
  v1::SessionResponse r;
  v1::OpError* e = r.mutable_error();
  e->set_op_seq(op_seq);
  e->set_code(static_cast<int>(status.code()));
  e->set_message(std::string(status.message()));
  return r;
}

}  // namespace

void CancelBoard::Cancel(const std::string& session, uint64_t op_seq) {
  absl::MutexLock lock(&mu_);
  auto& flag = flags_[session][op_seq];
  if (!flag) flag = std::make_shared<std::atomic<bool>>(false);
  flag->store(true, std::memory_order_release);
}

std::shared_ptr<std::atomic<bool>> CancelBoard::Flag(const std::string& session, uint64_t op_seq) {
  absl::MutexLock lock(&mu_);
  auto& flag = flags_[session][op_seq];
  if (!flag) flag = std::make_shared<std::atomic<bool>>(false);
  return flag;
}

void CancelBoard::Forget(const std::string& session, uint64_t op_seq) {
  absl::MutexLock lock(&mu_);
  auto it = flags_.find(session);
  if (it == flags_.end()) return;
  it->second.erase(it->second.begin(), it->second.lower_bound(op_seq));
  if (it->second.empty()) flags_.erase(it);
}

void CancelBoard::Drop(const std::string& session) {
  absl::MutexLock lock(&mu_);
  flags_.erase(session);
}

Worker::Worker(std::shared_ptr<const model::Model> model,
               WorkerOptions options,
               DownstreamFactory downstream,
               BackendFactory backends,
               std::unique_ptr<model::KvPool> kv_pool)
    : model_(std::move(model)),
      options_(std::move(options)),
      downstream_factory_(std::move(downstream)),
      backend_factory_(std::move(backends)),
      kv_pool_(std::move(kv_pool)) {
  stats_.kv_capacity_bytes = static_cast<int64_t>(options_.kv_bytes);
}

Worker::~Worker() { Stop(); }

void Worker::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Worker::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;  // wakes Loop's wait as the lock is released
  }
  if (thread_.joinable()) thread_.join();
}

bool Worker::Post(Event event) {
  absl::MutexLock lock(&mu_);  // releasing it wakes Loop's wait
  if (stop_ || queue_.size() >= options_.max_queue) return false;
  queue_.push_back(std::move(event));
  stats_.queue_depth.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
  return true;
}

bool Worker::PostOpen(std::shared_ptr<ClientLink> client, v1::OpenSession open) {
  return Post(OpenEvent{std::move(client), std::move(open)});
}
bool Worker::PostClientOp(const std::string& session_id, v1::Op op) {
  return Post(OpEvent{session_id, Source::kClient, nullptr, std::move(op)});
}
bool Worker::PostClientGone(const std::string& session_id) {
  return Post(ClientGoneEvent{session_id});
}
bool Worker::PostPushOpen(std::shared_ptr<UpstreamLink> upstream,
                          std::string session_id,
                          std::string token) {
  return Post(PushOpenEvent{std::move(upstream), std::move(session_id), std::move(token)});
}
bool Worker::PostPushOp(const std::string& session_id, const UpstreamLink* upstream, v1::Op op) {
  return Post(OpEvent{session_id, Source::kPush, upstream, std::move(op)});
}
bool Worker::PostPushOffer(const std::string& session_id,
                           const UpstreamLink* upstream,
                           std::function<void(bool accepted)> answer) {
  return Post(PushOfferEvent{session_id, upstream, std::move(answer)});
}
bool Worker::PostStateRequest(const std::string& session_id) {
  return Post(StateEvent{session_id});
}

bool Worker::PostPushGone(const std::string& session_id, std::shared_ptr<UpstreamLink> upstream) {
  return Post(PushGoneEvent{session_id, std::move(upstream)});
}

void Worker::SetDraining(bool draining, bool notify, std::string reason) {
  draining_.store(draining);
  if (draining && notify) Post(DrainEvent{std::move(reason)});
}

std::vector<std::string> Worker::RecentPeers() const {
  absl::MutexLock lock(&peers_mu_);
  std::vector<std::string> out;
  for (const auto& [address, when] : peers_) out.push_back(address);
  return out;
}

void Worker::Loop() {
  std::vector<Event> events;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(250));
      if (stop_) break;
      events.swap(queue_);
      stats_.queue_depth.store(0, std::memory_order_relaxed);
    }
    for (Event& e : events) Handle(e);
    events.clear();
    RunReady();
    ExpireIdle();
    UpdateStats();
  }
  std::vector<std::string> ids;
  for (auto& [id, s] : sessions_) ids.push_back(id);
  for (const std::string& id : ids) CloseSession(id, absl::UnavailableError("node shutting down"));
  while (!held_pushes_.empty()) {
    DropHeldPush(held_pushes_.begin()->first, absl::UnavailableError("node shutting down"));
  }
  UpdateStats();
}

void Worker::Handle(Event& event) {
  if (HoldBehindPush(event)) return;
  if (auto* e = std::get_if<OpenEvent>(&event)) {
    HandleOpen(*e);
  } else if (auto* e = std::get_if<OpEvent>(&event)) {
    HandleOp(*e);
  } else if (auto* e = std::get_if<ClientGoneEvent>(&event)) {
    CloseSession(e->session_id, absl::OkStatus());
  } else if (auto* e = std::get_if<PushOpenEvent>(&event)) {
    HandlePushOpen(*e);
  } else if (auto* e = std::get_if<PushOfferEvent>(&event)) {
    HandlePushOffer(*e);
  } else if (auto* e = std::get_if<PushGoneEvent>(&event)) {
    HandlePushGone(*e);
  } else if (auto* e = std::get_if<DownstreamFailedEvent>(&event)) {
    HandleDownstreamFailed(*e);
  } else if (auto* e = std::get_if<StateEvent>(&event)) {
    HandleStateRequest(*e);
  } else if (auto* e = std::get_if<DrainEvent>(&event)) {
    HandleDrain(*e);
  }
}

void Worker::HandlePushOffer(PushOfferEvent& e) {
  // Behind the stream's PushOpen in the queue: a refused stream has no session pointing at it.
  auto it = sessions_.find(e.session_id);
  e.answer(it != sessions_.end() && it->second.upstream.get() == e.upstream);
}

void Worker::HandlePushGone(PushGoneEvent& e) {
  // Refused streams were closed at open already (a no-op here); an accepted one ends cleanly.
  e.upstream->Close(absl::OkStatus());
  auto it = sessions_.find(e.session_id);
  if (it != sessions_.end() && it->second.upstream == e.upstream) {
    it->second.upstream.reset();
  }
}

void Worker::HandleDownstreamFailed(DownstreamFailedEvent& e) {
  auto it = sessions_.find(e.session_id);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  if (e.generation != s.downstream_generation) return;  // a link already replaced
  s.downstream.reset();
  // The next hop ending its session (OK) is how a chain closes, usually just before this hop
  // hears of it too; only a broken link is an error.
  const bool ended = e.status.ok();
  const std::string what =
      ended ? StrCat("next hop ", s.next_address, " ended the session")
            : StrCat("next hop ", s.next_address, " failed: ", e.status.message());
  if (ended) {
    STRATA_LOG(Debug) << "session " << e.session_id << ": " << what;
  } else {
    STRATA_LOG(Warning) << "session " << e.session_id << ": " << what;
  }
  if (s.detached) return;
  // Keep applying ops so every hop sees the same order; the client re-points us (Redirect).
  s.detached = true;
  if (!ended) stats_.errors.fetch_add(1, std::memory_order_relaxed);
  v1::SessionResponse r;
  r.mutable_next_hop_lost()->set_last_op_seq(s.next_op - 1);
  r.mutable_next_hop_lost()->set_message(what);
  s.client->Send(std::move(r));
}

void Worker::HandleStateRequest(const StateEvent& e) {
  auto it = sessions_.find(e.session_id);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  v1::SessionResponse r;
  v1::SessionState* st = r.mutable_state();
  st->set_applied_op_seq(s.next_op - 1);
  st->set_used_cells(s.kv->used_cells());
  model::SeqMask present = 0;
  for (const auto& c : s.kv->cells()) present |= c.seqs;
  for (model::SeqMask m = present; m; m &= m - 1) {
    const int seq = __builtin_ctzll(m);
    v1::SessionState::Seq* q = st->add_seqs();
    q->set_seq(seq);
    q->set_length(s.kv->SeqLength(seq));
    q->set_cells(s.kv->SeqCells(seq));
  }
  s.client->Send(std::move(r));
}

void Worker::HandleDrain(const DrainEvent& e) {
  for (auto& [id, s] : sessions_) {
    v1::SessionResponse r;
    r.mutable_draining()->set_reason(e.reason);
    s.client->Send(std::move(r));
  }
}

absl::StatusOr<std::shared_ptr<model::SpanBackend>> Worker::SpanFor(int first, int last) {
  auto key = std::make_pair(first, last);
  auto it = spans_.find(key);
  if (it != spans_.end()) return it->second;
  auto span = backend_factory_(first, last);
  if (!span.ok()) return span.status();
  std::shared_ptr<model::SpanBackend> shared(std::move(*span));
  spans_[key] = shared;
  return shared;
}

absl::Status Worker::CheckOpen(const v1::OpenSession& o) {
  if (o.protocol_version() != static_cast<int>(kProtocolVersion)) {
    return absl::FailedPreconditionError(StrCat("protocol version ",
                                                o.protocol_version(),
                                                " is not supported (this node speaks version ",
                                                kProtocolVersion,
                                                ")"));
  }
  if (o.session_id().empty() || o.session_id().size() > kMaxSessionIdBytes) {
    return absl::InvalidArgumentError("session_id must be 1 to 128 bytes");
  }
  if (sessions_.contains(o.session_id())) {
    return absl::AlreadyExistsError(StrCat("session ", o.session_id(), " is already open"));
  }
  if (draining_.load()) return absl::UnavailableError("node is draining; try another route");
  if (o.model_id() != model_->id()) {
    return absl::FailedPreconditionError(StrCat(
        "model '", o.model_id(), "' is not served here (this node serves '", model_->id(), "')"));
  }
  const int first = first_layer(), last = last_layer();
  if (first == last) return absl::UnavailableError("node is still loading its span");
  if (o.first_layer() < first || o.last_layer() > last || o.first_layer() >= o.last_layer()) {
    return absl::OutOfRangeError(StrCat("layers [",
                                        o.first_layer(),
                                        ", ",
                                        o.last_layer(),
                                        ") are not inside this node's span [",
                                        first,
                                        ", ",
                                        last,
                                        ")"));
  }
  const int n_ctx = model_->hparams().n_ctx_train;
  if (o.max_length() < 0 || o.max_length() > n_ctx) {
    return absl::InvalidArgumentError(
        StrCat("max_length ", o.max_length(), " is outside [1, ", n_ctx, "]"));
  }
  if (transport::WireElementBytes(o.wire_dtype()) == 0 && o.wire_dtype() != v1::DTYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError("unknown wire dtype");
  }
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    return absl::ResourceExhaustedError(
        StrCat("node is at its limit of ", options_.max_sessions, " sessions"));
  }
  return absl::OkStatus();
}

void Worker::HandleOpen(OpenEvent& e) {
  const v1::OpenSession& o = e.open;
  auto refuse = [&](const absl::Status& status) {
    stats_.errors.fetch_add(1, std::memory_order_relaxed);
    e.client->Close(status);
    if (status.code() != absl::StatusCode::kAlreadyExists) {
      DropHeldPush(
          o.session_id(),
          absl::NotFoundError(StrCat(
              "the open of session '", o.session_id(), "' was refused: ", status.message())));
    }
  };
  if (absl::Status st = CheckOpen(o); !st.ok()) return refuse(st);
  auto span = SpanFor(o.first_layer(), o.last_layer());
  if (!span.ok()) return refuse(span.status());

  const int n_ctx = model_->hparams().n_ctx_train;
  Session s;
  s.open = o;
  if (s.open.max_length() == 0) s.open.set_max_length(n_ctx);
  if (s.open.wire_dtype() == v1::DTYPE_UNSPECIFIED) s.open.set_wire_dtype(v1::DTYPE_F32);
  s.client = e.client;
  s.span = *span;
  s.next_op = o.first_op_seq() > 0 ? o.first_op_seq() : 1;
  s.next_address = o.next_address();
  s.next_session_id = o.next_session_id().empty() ? o.session_id() : o.next_session_id();
  s.next_token = o.next_token().empty() ? o.token() : o.next_token();
  s.kv = (*span)->NewKvCache(kv_pool_.get());
  s.last_active = options_.clock->Now();
  v1::SessionResponse r;
  r.mutable_opened()->set_node_id(options_.node_id);
  r.mutable_opened()->set_first_layer(o.first_layer());
  r.mutable_opened()->set_last_layer(o.last_layer());
  s.client->Send(std::move(r));
  sessions_.emplace(o.session_id(), std::move(s));
  ReleaseHeldPush(o.session_id());
}

bool Worker::HoldBehindPush(Event& event) {
  const std::string* id = nullptr;
  const UpstreamLink* upstream = nullptr;
  if (auto* e = std::get_if<OpEvent>(&event); e != nullptr && e->source == Source::kPush) {
    id = &e->session_id;
    upstream = e->upstream;
  } else if (auto* e = std::get_if<PushOfferEvent>(&event)) {
    id = &e->session_id;
    upstream = e->upstream;
  } else if (auto* e = std::get_if<PushGoneEvent>(&event)) {
    id = &e->session_id;
    upstream = e->upstream.get();
  }
  if (id == nullptr) return false;
  auto it = held_pushes_.find(*id);
  if (it == held_pushes_.end() || it->second.open.upstream.get() != upstream) return false;
  if (std::holds_alternative<PushGoneEvent>(event)) {
    // The previous hop gave up before the session opened here.
    DropHeldPush(*id, absl::NotFoundError(StrCat("unknown session '", *id, "'")));
  } else {
    it->second.behind.push_back(std::move(event));
  }
  return true;
}

void Worker::ReleaseHeldPush(const std::string& session_id) {
  auto it = held_pushes_.find(session_id);
  if (it == held_pushes_.end()) return;
  HeldPush held = std::move(it->second);
  held_pushes_.erase(it);
  HandlePushOpen(held.open);
  for (Event& e : held.behind) Handle(e);
}

void Worker::DropHeldPush(const std::string& session_id, const absl::Status& status) {
  auto it = held_pushes_.find(session_id);
  if (it == held_pushes_.end()) return;
  HeldPush held = std::move(it->second);
  held_pushes_.erase(it);
  held.open.upstream->Close(status);
  for (Event& e : held.behind) {
    if (auto* offer = std::get_if<PushOfferEvent>(&e)) offer->answer(false);
  }
}

void Worker::HandlePushOpen(PushOpenEvent& e) {
  auto it = sessions_.find(e.session_id);
  if (it == sessions_.end()) {
    // The client's open may still be on its way: the stream waits for it, within bounds.
    if (!held_pushes_.contains(e.session_id) &&
        static_cast<int>(held_pushes_.size()) < options_.max_sessions &&
        options_.push_before_open > absl::ZeroDuration()) {
      std::string id = e.session_id;  // (the event is moved into the map)
      const absl::Time deadline = options_.clock->Now() + options_.push_before_open;
      held_pushes_.emplace(std::move(id), HeldPush{std::move(e), {}, deadline});
      return;
    }
    e.upstream->Close(absl::NotFoundError(StrCat("unknown session '", e.session_id, "'")));
    return;
  }
  Session& s = it->second;
  if (e.token != s.open.token()) {
    e.upstream->Close(absl::PermissionDeniedError("wrong session token"));
    return;
  }
  if (s.open.hop_index() == 0) {
    e.upstream->Close(absl::FailedPreconditionError(
        "this node is the first hop of the session; ops come from the client"));
    return;
  }
  if (s.upstream) {
    e.upstream->Close(absl::AlreadyExistsError("session already has a push stream"));
    return;
  }
  s.upstream = e.upstream;
}

void Worker::HandleOp(OpEvent& e) {
  auto it = sessions_.find(e.session_id);
  if (it == sessions_.end()) return;  // the stream has already been answered or closed
  Session& s = it->second;
  s.last_active = options_.clock->Now();
  const uint64_t seq = e.op.op_seq();
  if (e.source == Source::kPush && s.upstream.get() != e.upstream) return;
  const bool from_client = e.source == Source::kClient;
  const bool client_allowed =
      s.open.hop_index() == 0 || (s.open.first_op_from_client() && seq == s.open.first_op_seq());
  if (from_client != client_allowed) {
    FailOp(s,
           seq,
           absl::FailedPreconditionError(from_client
                                             ? "ops for this hop must come from the previous hop"
                                             : "ops for the first hop must come from the client"),
           false);
    return;
  }
  if (s.failed) {
    FailOp(s, seq, absl::FailedPreconditionError("the session failed earlier; reopen it"), false);
    return;
  }
  const uint64_t expected = s.next_op + s.ops.size();
  if (seq < expected) return;  // a duplicate: each op is applied exactly once
  if (seq > expected) {
    FailOp(s,
           seq,
           absl::InvalidArgumentError(
               StrCat("op_seq ", seq, " is out of order (expected ", expected, ")")),
           false);
    return;
  }
  if (e.op.kind_case() == v1::Op::KIND_NOT_SET) {
    FailOp(s, seq, absl::InvalidArgumentError("op has no kind"), false);
    return;
  }
  s.ops.push_back(std::move(e.op));
}

void Worker::FailOp(Session& s, uint64_t op_seq, const absl::Status& status, bool poison) {
  stats_.errors.fetch_add(1, std::memory_order_relaxed);
  STRATA_LOG(Info) << "session " << s.open.session_id() << " op " << op_seq << ": " << status;
  if (poison) {
    s.failed = true;
    s.ops.clear();
  }
  s.client->Send(ErrorResponse(op_seq, status));
}

void Worker::CloseSession(const std::string& id, absl::Status status) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  if (s.downstream) s.downstream->Close();
  if (s.upstream) s.upstream->Close(absl::OkStatus());
  s.client->Close(std::move(status));
  cancels_.Drop(id);
  sessions_.erase(it);
}

void Worker::ExpireIdle() {
  const absl::Time now = options_.clock->Now();
  std::vector<std::string> idle;
  for (auto& [id, s] : sessions_) {
    if (s.ops.empty() && now - s.last_active > options_.idle_timeout) idle.push_back(id);
  }
  for (const std::string& id : idle) {
    STRATA_LOG(Info) << "session " << id << " idle for " << options_.idle_timeout << "; closing it";
    CloseSession(id, absl::DeadlineExceededError("session idle timeout"));
  }
  std::vector<std::string> unopened;
  for (const auto& [id, held] : held_pushes_) {
    if (now >= held.deadline) unopened.push_back(id);
  }
  for (const std::string& id : unopened) {
    DropHeldPush(id,
                 absl::NotFoundError(StrCat("unknown session '",
                                            id,
                                            "' (not opened within ",
                                            absl::FormatDuration(options_.push_before_open),
                                            ")")));
  }
  absl::MutexLock lock(&peers_mu_);
  for (auto it = peers_.begin(); it != peers_.end();) {
    it = now - it->second > absl::Minutes(2) ? peers_.erase(it) : std::next(it);
  }
}

void Worker::UpdateStats() {
  stats_.active_sessions.store(static_cast<int>(sessions_.size()), std::memory_order_relaxed);
  stats_.kv_used_bytes.store(static_cast<int64_t>(kv_pool_->used_bytes()),
                             std::memory_order_relaxed);
}

}  // namespace strata::node
