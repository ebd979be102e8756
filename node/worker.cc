#include "node/worker.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::node {
namespace {

constexpr size_t kMaxSessionIdBytes = 128;
constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_1;

grpc::Status Grpc(absl::StatusCode code, const std::string& message) {
  return grpc::Status(static_cast<grpc::StatusCode>(code), message);
}

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
  std::lock_guard<std::mutex> lock(mu_);
  auto& flag = flags_[session][op_seq];
  if (!flag) flag = std::make_shared<std::atomic<bool>>(false);
  flag->store(true, std::memory_order_release);
}

std::shared_ptr<std::atomic<bool>> CancelBoard::Flag(const std::string& session, uint64_t op_seq) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& flag = flags_[session][op_seq];
  if (!flag) flag = std::make_shared<std::atomic<bool>>(false);
  return flag;
}

void CancelBoard::Forget(const std::string& session, uint64_t op_seq) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = flags_.find(session);
  if (it == flags_.end()) return;
  it->second.erase(it->second.begin(), it->second.lower_bound(op_seq));
  if (it->second.empty()) flags_.erase(it);
}

void CancelBoard::Drop(const std::string& session) {
  std::lock_guard<std::mutex> lock(mu_);
  flags_.erase(session);
}

Worker::Worker(std::shared_ptr<const model::Model> model, WorkerOptions options,
               DownstreamFactory downstream, BackendFactory backends,
               std::unique_ptr<model::KvPool> kv_pool)
    : model_(std::move(model)),
      options_(std::move(options)),
      downstream_factory_(std::move(downstream)),
      backend_factory_(std::move(backends)),
      kv_pool_(std::move(kv_pool)) {
  stats_.kv_capacity_bytes = static_cast<int64_t>(options_.kv_bytes);
}

Worker::~Worker() { Stop(); }

void Worker::Start() { thread_ = std::thread([this] { Loop(); }); }

void Worker::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Worker::Post(Event event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || queue_.size() >= options_.max_queue) return false;
    queue_.push_back(std::move(event));
    stats_.queue_depth.store(static_cast<int>(queue_.size()), std::memory_order_relaxed);
  }
  cv_.notify_one();
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
bool Worker::PostPushOpen(std::shared_ptr<UpstreamLink> upstream, std::string session_id,
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
  std::lock_guard<std::mutex> lock(peers_mu_);
  std::vector<std::string> out;
  for (const auto& [address, when] : peers_) out.push_back(address);
  return out;
}

void Worker::Loop() {
  std::vector<Event> events;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stop_ || !queue_.empty(); });
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
  for (const std::string& id : ids) {
    CloseSession(id, Grpc(absl::StatusCode::kUnavailable, "node shutting down"));
  }
  while (!held_pushes_.empty()) {
    DropHeldPush(held_pushes_.begin()->first,
                 Grpc(absl::StatusCode::kUnavailable, "node shutting down"));
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
    CloseSession(e->session_id, grpc::Status::OK);
  } else if (auto* e = std::get_if<PushOpenEvent>(&event)) {
    HandlePushOpen(*e);
  } else if (auto* e = std::get_if<PushOfferEvent>(&event)) {
    // Behind the stream's PushOpen in the queue: a refused stream has no session pointing at it.
    auto it = sessions_.find(e->session_id);
    e->answer(it != sessions_.end() && it->second.upstream.get() == e->upstream);
  } else if (auto* e = std::get_if<PushGoneEvent>(&event)) {
    // Refused streams were closed at open already (a no-op here); an accepted one ends cleanly.
    e->upstream->Close(grpc::Status::OK);
    auto it = sessions_.find(e->session_id);
    if (it != sessions_.end() && it->second.upstream == e->upstream) {
      it->second.upstream.reset();
    }
  } else if (auto* e = std::get_if<DownstreamFailedEvent>(&event)) {
    auto it = sessions_.find(e->session_id);
    if (it == sessions_.end()) return;
    Session& s = it->second;
    if (e->generation != s.downstream_generation) return;  // a link already replaced
    s.downstream.reset();
    // The next hop ending its session (OK) is how a chain closes, usually just before this hop
    // hears of it too; only a broken link is an error.
    const bool ended = e->status.ok();
    const std::string what = ended ? StrCat("next hop ", s.next_address, " ended the session")
                                   : StrCat("next hop ", s.next_address,
                                            " failed: ", e->status.error_message());
    if (ended) {
      STRATA_LOG(Debug) << "session " << e->session_id << ": " << what;
    } else {
      STRATA_LOG(Warning) << "session " << e->session_id << ": " << what;
    }
    if (!s.detached) {
      // Keep applying ops so every hop sees the same order; the client re-points us (Redirect).
      s.detached = true;
      if (!ended) stats_.errors.fetch_add(1, std::memory_order_relaxed);
      v1::SessionResponse r;
      r.mutable_next_hop_lost()->set_last_op_seq(s.next_op - 1);
      r.mutable_next_hop_lost()->set_message(what);
      s.client->Send(std::move(r));
    }
  } else if (auto* e = std::get_if<StateEvent>(&event)) {
    auto it = sessions_.find(e->session_id);
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
  } else if (auto* e = std::get_if<DrainEvent>(&event)) {
    for (auto& [id, s] : sessions_) {
      v1::SessionResponse r;
      r.mutable_draining()->set_reason(e->reason);
      s.client->Send(std::move(r));
    }
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

void Worker::HandleOpen(OpenEvent& e) {
  const v1::OpenSession& o = e.open;
  auto refuse = [&](absl::StatusCode code, const std::string& msg) {
    stats_.errors.fetch_add(1, std::memory_order_relaxed);
    e.client->Close(Grpc(code, msg));
    if (code != absl::StatusCode::kAlreadyExists) {
      DropHeldPush(o.session_id(), Grpc(absl::StatusCode::kNotFound,
                                        StrCat("the open of session '", o.session_id(),
                                               "' was refused: ", msg)));
    }
  };
  if (o.protocol_version() != static_cast<int>(kProtocolVersion)) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  StrCat("protocol version ", o.protocol_version(),
                         " is not supported (this node speaks version ", kProtocolVersion, ")"));
  }
  if (o.session_id().empty() || o.session_id().size() > kMaxSessionIdBytes) {
    return refuse(absl::StatusCode::kInvalidArgument, "session_id must be 1 to 128 bytes");
  }
  if (sessions_.contains(o.session_id())) {
    return refuse(absl::StatusCode::kAlreadyExists,
                  StrCat("session ", o.session_id(), " is already open"));
  }
  if (draining_.load()) {
    return refuse(absl::StatusCode::kUnavailable, "node is draining; try another route");
  }
  if (o.model_id() != model_->id()) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  StrCat("model '", o.model_id(), "' is not served here (this node serves '",
                         model_->id(), "')"));
  }
  const int first = first_layer(), last = last_layer();
  if (first == last) {
    return refuse(absl::StatusCode::kUnavailable, "node is still loading its span");
  }
  if (o.first_layer() < first || o.last_layer() > last || o.first_layer() >= o.last_layer()) {
    return refuse(absl::StatusCode::kOutOfRange,
                  StrCat("layers [", o.first_layer(), ", ", o.last_layer(),
                         ") are not inside this node's span [", first, ", ", last, ")"));
  }
  const int n_ctx = model_->hparams().n_ctx_train;
  if (o.max_length() < 0 || o.max_length() > n_ctx) {
    return refuse(absl::StatusCode::kInvalidArgument,
                  StrCat("max_length ", o.max_length(), " is outside [1, ", n_ctx, "]"));
  }
  if (transport::WireElementBytes(o.wire_dtype()) == 0 && o.wire_dtype() != v1::DTYPE_UNSPECIFIED) {
    return refuse(absl::StatusCode::kInvalidArgument, "unknown wire dtype");
  }
  if (static_cast<int>(sessions_.size()) >= options_.max_sessions) {
    return refuse(absl::StatusCode::kResourceExhausted,
                  StrCat("node is at its limit of ", options_.max_sessions, " sessions"));
  }
  auto span = SpanFor(o.first_layer(), o.last_layer());
  if (!span.ok()) return refuse(span.status().code(), std::string(span.status().message()));

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
    DropHeldPush(*id, Grpc(absl::StatusCode::kNotFound, StrCat("unknown session '", *id, "'")));
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

void Worker::DropHeldPush(const std::string& session_id, const grpc::Status& status) {
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
    e.upstream->Close(Grpc(absl::StatusCode::kNotFound,
                           StrCat("unknown session '", e.session_id, "'")));
    return;
  }
  Session& s = it->second;
  if (e.token != s.open.token()) {
    e.upstream->Close(Grpc(absl::StatusCode::kPermissionDenied, "wrong session token"));
    return;
  }
  if (s.open.hop_index() == 0) {
    e.upstream->Close(Grpc(absl::StatusCode::kFailedPrecondition,
                           "this node is the first hop of the session; ops come from the client"));
    return;
  }
  if (s.upstream) {
    e.upstream->Close(Grpc(absl::StatusCode::kAlreadyExists, "session already has a push stream"));
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
  const bool client_allowed = s.open.hop_index() == 0 ||
                              (s.open.first_op_from_client() && seq == s.open.first_op_seq());
  if (from_client != client_allowed) {
    FailOp(s, seq,
           absl::FailedPreconditionError(
               from_client ? "ops for this hop must come from the previous hop"
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
    FailOp(s, seq,
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

void Worker::CloseSession(const std::string& id, grpc::Status status) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  if (s.downstream) s.downstream->Close();
  if (s.upstream) s.upstream->Close(grpc::Status::OK);
  s.client->Close(std::move(status));
  cancels_.Drop(id);
  sessions_.erase(it);
}

void Worker::RunReady() {
  std::vector<std::pair<std::string, Session*>> batch;
  while (true) {
    batch.clear();
    int rows = 0;
    for (auto& [id, s] : sessions_) {
      while (!s.ops.empty() && !s.failed && !s.ops.front().has_forward()) {
        v1::Op op = std::move(s.ops.front());
        s.ops.pop_front();
        ApplyControlOp(id, s, op);
      }
      if (s.ops.empty() || s.failed) continue;
      const int n = s.ops.front().forward().rows_size();
      if (!batch.empty() && rows + n > options_.max_batch_rows) continue;
      batch.emplace_back(id, &s);
      rows += n;
    }
    if (batch.empty()) return;
    RunForwards(batch);
    // Let ops that arrived meanwhile join the next batch.
    std::vector<Event> more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      more.swap(queue_);
    }
    for (Event& e : more) Handle(e);
  }
}

void Worker::ApplyControlOp(const std::string& id, Session& s, const v1::Op& op) {
  auto seq_ok = [](int seq) { return seq >= 0 && seq < model::kMaxSeqs; };
  switch (op.kind_case()) {
    case v1::Op::kTruncate:
      if (!seq_ok(op.truncate().seq()) || op.truncate().from_pos() < 0) {
        return FailOp(s, op.op_seq(), absl::InvalidArgumentError("bad truncate"), true);
      }
      s.kv->Truncate(op.truncate().seq(), op.truncate().from_pos());
      break;
    case v1::Op::kFork:
      if (!seq_ok(op.fork().src()) || !seq_ok(op.fork().dst())) {
        return FailOp(s, op.op_seq(), absl::InvalidArgumentError("bad fork"), true);
      }
      s.kv->Fork(op.fork().src(), op.fork().dst());
      break;
    case v1::Op::kKeep:
      if (!seq_ok(op.keep().seq())) {
        return FailOp(s, op.op_seq(), absl::InvalidArgumentError("bad keep"), true);
      }
      s.kv->Keep(op.keep().seq());
      break;
    case v1::Op::kCommit:
      if (!seq_ok(op.commit().seq()) || op.commit().until_pos() < 0) {
        return FailOp(s, op.op_seq(), absl::InvalidArgumentError("bad commit"), true);
      }
      s.kv->Commit(op.commit().seq(), op.commit().until_pos());
      break;
    case v1::Op::kRedirect:
      return ApplyRedirect(id, s, op);
    default:
      return FailOp(s, op.op_seq(), absl::InvalidArgumentError("unknown op"), true);
  }
  s.next_op = op.op_seq() + 1;
  if (s.next_address.empty()) {
    v1::SessionResponse r;
    r.mutable_done()->set_op_seq(op.op_seq());
    s.client->Send(std::move(r));
  } else {
    PassOn(id, s, op);
    if (s.open.want_boundary_copies() && !s.detached) {
      // An empty copy: tells the client the op got this far (to find a stuck hop).
      v1::SessionResponse r;
      r.mutable_boundary()->set_op_seq(op.op_seq());
      r.mutable_boundary()->set_boundary_layer(s.open.last_layer());
      s.client->Send(std::move(r));
    }
  }
}

void Worker::ApplyRedirect(const std::string& id, Session& s, const v1::Op& op) {
  const v1::Redirect& r = op.redirect();
  if (r.target_hop() < s.open.hop_index() || r.next_address().empty() || s.next_address.empty()) {
    return FailOp(s, op.op_seq(),
                  absl::InvalidArgumentError(StrCat("redirect for hop ", r.target_hop(),
                                                    " reached hop ", s.open.hop_index())),
                  /*poison=*/true);
  }
  s.next_op = op.op_seq() + 1;
  if (r.target_hop() > s.open.hop_index()) {
    PassOn(id, s, op);
    return;
  }
  if (s.downstream) s.downstream->Close();
  s.downstream.reset();
  ++s.downstream_generation;  // a late failure report of the old link must not detach us
  s.detached = false;
  s.next_address = r.next_address();
  s.next_session_id = r.next_session_id();
  s.next_token = r.next_token();
  v1::SessionResponse done;
  done.mutable_done()->set_op_seq(op.op_seq());
  s.client->Send(std::move(done));
}

void Worker::PassOn(const std::string& id, Session& s, v1::Op op) {
  if (s.detached) return;  // dropped until a Redirect re-points this hop
  if (!s.downstream) {
    const std::string address = s.next_address;
    // The failure callback names the link it belongs to, so a late failure of a replaced link
    // does not detach the session from its new next hop.
    const uint64_t generation = ++s.downstream_generation;
    s.downstream = downstream_factory_(address, [this, id, generation](grpc::Status status) {
      Post(DownstreamFailedEvent{id, generation, std::move(status)});
    });
    v1::PushRequest first;
    first.set_session_id(s.next_session_id);
    first.set_token(s.next_token);
    *first.mutable_op() = std::move(op);
    s.downstream->Send(std::move(first));
  } else {
    v1::PushRequest next;
    *next.mutable_op() = std::move(op);
    s.downstream->Send(std::move(next));
  }
  std::lock_guard<std::mutex> lock(peers_mu_);
  peers_[s.next_address] = options_.clock->Now();
}

void Worker::RunForwards(std::vector<std::pair<std::string, Session*>>& batch) {
  const int width = model_->hparams().n_embd;
  // Sessions over the same layer range form one pass: put them next to each other.
  std::stable_sort(batch.begin(), batch.end(), [](const auto& a, const auto& b) {
    return a.second->span.get() < b.second->span.get();
  });
  // Decode and validate every op first; invalid ones fail alone.
  struct Item {
    std::string id;
    Session* s;
    v1::Op op;
    std::vector<model::Row> rows;
    size_t offset;  // first float of its rows in `hidden`
    std::shared_ptr<std::atomic<bool>> cancel;
    bool cancelled = false;
  };
  std::vector<Item> items;
  std::vector<float> hidden;
  for (auto& [id, s] : batch) {
    v1::Op op = std::move(s->ops.front());
    s->ops.pop_front();
    const v1::Forward& f = op.forward();
    const int n = f.rows_size();
    auto cancel = cancels_.Flag(id, op.op_seq());
    if (f.cancelled() || cancel->load(std::memory_order_acquire)) {
      DeliverCancelled(id, *s, op);  // skipped before it started
      continue;
    }
    absl::Status st;
    if (n == 0 || n > options_.max_rows_per_op) {
      st = absl::InvalidArgumentError(
          StrCat("a forward needs 1 to ", options_.max_rows_per_op, " rows, got ", n));
    }
    std::vector<model::Row> rows(n);
    for (int i = 0; st.ok() && i < n; ++i) {
      const v1::RowMeta& r = f.rows(i);
      if (r.pos() < 0 || r.pos() >= s->open.max_length() || r.seqs() == 0) {
        st = absl::InvalidArgumentError(StrCat("row ", i, ": position ", r.pos(),
                                               " outside [0, ", s->open.max_length(),
                                               ") or an empty sequence set"));
      }
      rows[i] = {r.pos(), r.seqs(), r.attend()};
    }
    for (int32_t o : f.out_rows()) {
      if (st.ok() && (o < 0 || o >= n)) st = absl::InvalidArgumentError("out_rows out of range");
    }
    const size_t offset = hidden.size();
    if (st.ok()) st = transport::DecodeRows(f.hidden(), n, width, &hidden);
    if (!st.ok()) {
      hidden.resize(offset);
      FailOp(*s, op.op_seq(), st, /*poison=*/true);
      continue;
    }
    items.push_back({id, s, std::move(op), std::move(rows), offset, std::move(cancel)});
  }
  if (items.empty()) return;

  auto run = [&](std::span<Item> group) {
    std::vector<model::LayerSpan::Part> parts;
    for (Item& it : group) {
      parts.push_back({it.s->kv.get(), it.rows, it.cancel.get(), &it.cancelled});
    }
    // Every part of one pass must use the same span; group by span below.
    return group.front().s->span->ForwardBatch(parts, hidden.data() + group.front().offset);
  };
  // Sessions over the same layer range run as one pass; their rows are contiguous in `hidden`.
  size_t begin = 0;
  while (begin < items.size()) {
    size_t end = begin + 1;
    while (end < items.size() && items[end].s->span == items[begin].s->span) ++end;
    std::span<Item> group(items.data() + begin, end - begin);
    const absl::Time t0 = absl::Now();
    absl::Status st = run(group);
    double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    if (!st.ok() && group.size() > 1) {
      // All or nothing failed; find the culprit by running each alone.
      for (size_t i = 0; i < group.size(); ++i) {
        const absl::Time t1 = absl::Now();
        absl::Status one = run(group.subspan(i, 1));
        if (group[i].cancelled) {
          DeliverCancelled(group[i].id, *group[i].s, group[i].op);
        } else if (one.ok()) {
          DeliverForward(group[i].id, *group[i].s, group[i].op,
                         hidden.data() + group[i].offset, group[i].rows.size(),
                         absl::ToDoubleMilliseconds(absl::Now() - t1));
        } else {
          FailOp(*group[i].s, group[i].op.op_seq(), one, /*poison=*/true);
        }
      }
    } else if (!st.ok()) {
      if (group[0].cancelled) {
        DeliverCancelled(group[0].id, *group[0].s, group[0].op);
      } else {
        FailOp(*group[0].s, group[0].op.op_seq(), st, /*poison=*/true);
      }
    } else {
      int64_t rows = 0;
      for (Item& it : group) {
        if (it.cancelled) {
          DeliverCancelled(it.id, *it.s, it.op);
          continue;
        }
        DeliverForward(it.id, *it.s, it.op, hidden.data() + it.offset, it.rows.size(), ms);
        rows += static_cast<int64_t>(it.rows.size());
      }
      stats_.total_rows.fetch_add(rows, std::memory_order_relaxed);
      stats_.total_batches.fetch_add(1, std::memory_order_relaxed);
      stats_.batched_sessions.fetch_add(static_cast<int64_t>(group.size()),
                                        std::memory_order_relaxed);
      stats_.last_batch_ms.store(ms, std::memory_order_relaxed);
      if (options_.on_batch) options_.on_batch(absl::Milliseconds(ms));
    }
    begin = end;
  }
}

void Worker::DeliverForward(const std::string& id, Session& s, const v1::Op& op,
                            const float* hidden, int64_t rows, double compute_ms) {
  const int width = model_->hparams().n_embd;
  const v1::Forward& f = op.forward();
  s.next_op = op.op_seq() + 1;
  cancels_.Forget(id, s.next_op);
  if (s.next_address.empty()) {
    v1::SessionResponse r;
    v1::ForwardResult* result = r.mutable_result();
    result->set_op_seq(op.op_seq());
    result->set_compute_ms(compute_ms);
    if (f.has_verify()) {
      // The rows were computed (every hop holds them, as after any forward); a verification
      // that cannot be done fails this op alone.
      auto tokens = Verify(f, hidden, rows);
      if (!tokens.ok()) {
        FailOp(s, op.op_seq(), tokens.status(), /*poison=*/false);
        return;
      }
      *result->mutable_tokens() = {tokens->begin(), tokens->end()};
      stats_.verified_runs.fetch_add(1, std::memory_order_relaxed);
    } else if (f.out_rows_size() == 0) {
      transport::EncodeRows(hidden, rows, width, s.open.wire_dtype(), result->mutable_hidden());
    } else {
      std::vector<float> picked;
      picked.reserve(static_cast<size_t>(f.out_rows_size()) * width);
      for (int32_t o : f.out_rows()) picked.insert(picked.end(), hidden + o * width, hidden + (o + 1) * width);
      transport::EncodeRows(picked.data(), f.out_rows_size(), width, s.open.wire_dtype(),
                            result->mutable_hidden());
    }
    s.client->Send(std::move(r));
    return;
  }
  v1::Op next;
  next.set_op_seq(op.op_seq());
  v1::Forward* nf = next.mutable_forward();
  *nf->mutable_rows() = f.rows();
  *nf->mutable_out_rows() = f.out_rows();
  if (f.has_verify()) *nf->mutable_verify() = f.verify();
  transport::EncodeRows(hidden, rows, width, s.open.wire_dtype(), nf->mutable_hidden());
  if (s.open.want_boundary_copies() && !s.detached) {
    v1::SessionResponse r;
    v1::BoundaryStates* b = r.mutable_boundary();
    b->set_op_seq(op.op_seq());
    b->set_boundary_layer(s.open.last_layer());
    *b->mutable_rows() = f.rows();
    *b->mutable_hidden() = nf->hidden();
    PassOn(id, s, std::move(next));
    s.client->Send(std::move(r));  // off the critical path: after the push
    return;
  }
  PassOn(id, s, std::move(next));
}

absl::StatusOr<std::vector<int32_t>> Worker::Verify(const v1::Forward& f, const float* hidden,
                                                    int64_t rows) {
  const int width = model_->hparams().n_embd;
  const v1::Verify& v = f.verify();
  // Out rows: consecutive positions, each deciding the next.
  std::vector<int32_t> out(f.out_rows().begin(), f.out_rows().end());
  if (out.empty()) {
    for (int32_t i = 0; i < rows; ++i) out.push_back(i);
  }
  std::vector<int32_t> positions;
  for (int32_t o : out) positions.push_back(f.rows(o).pos());
  model::VerifySpec spec;
  ASSIGN_OR_RETURN(spec.first_position, model::FirstDecidedPosition(positions));
  spec.sampling.temperature = v.temperature();
  spec.sampling.top_k = v.top_k();
  spec.sampling.top_p = v.top_p();
  spec.sampling.min_p = v.min_p();
  spec.sampling.repeat_penalty = v.repeat_penalty();
  spec.sampling.repeat_last_n = v.repeat_last_n();
  spec.sampling.seed = v.seed();
  spec.rejection_sampling = v.rejection_sampling();
  spec.history.assign(v.history().begin(), v.history().end());
  spec.drafts.assign(v.drafts().begin(), v.drafts().end());
  if (!verifier_) {
    verify_pool_ = std::make_unique<ThreadPool>(
        options_.verify_threads > 0 ? options_.verify_threads : ThreadPool::DefaultThreads());
    ASSIGN_OR_RETURN(verifier_, model::Verifier::Load(model_, verify_pool_.get()));
  }
  std::vector<float> picked;
  picked.reserve(out.size() * width);
  for (int32_t o : out) picked.insert(picked.end(), hidden + o * width, hidden + (o + 1) * width);
  return verifier_->Verify(picked.data(), static_cast<int64_t>(out.size()), spec);  // validates
}

void Worker::DeliverCancelled(const std::string& id, Session& s, const v1::Op& op) {
  s.next_op = op.op_seq() + 1;
  cancels_.Forget(id, s.next_op);
  if (s.next_address.empty()) {
    v1::SessionResponse r;
    r.mutable_error()->set_op_seq(op.op_seq());
    r.mutable_error()->set_code(static_cast<int>(absl::StatusCode::kCancelled));
    r.mutable_error()->set_message("run cancelled");
    s.client->Send(std::move(r));
    return;
  }
  v1::Op stub;
  stub.set_op_seq(op.op_seq());
  stub.mutable_forward()->set_cancelled(true);
  PassOn(id, s, std::move(stub));
}

void Worker::ExpireIdle() {
  const absl::Time now = options_.clock->Now();
  std::vector<std::string> idle;
  for (auto& [id, s] : sessions_) {
    if (s.ops.empty() && now - s.last_active > options_.idle_timeout) idle.push_back(id);
  }
  for (const std::string& id : idle) {
    STRATA_LOG(Info) << "session " << id << " idle for " << options_.idle_timeout
                     << "; closing it";
    CloseSession(id, Grpc(absl::StatusCode::kDeadlineExceeded, "session idle timeout"));
  }
  std::vector<std::string> unopened;
  for (const auto& [id, held] : held_pushes_) {
    if (now >= held.deadline) unopened.push_back(id);
  }
  for (const std::string& id : unopened) {
    DropHeldPush(id, Grpc(absl::StatusCode::kNotFound,
                          StrCat("unknown session '", id, "' (not opened within ",
                                 absl::FormatDuration(options_.push_before_open), ")")));
  }
  std::lock_guard<std::mutex> lock(peers_mu_);
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
