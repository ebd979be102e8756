// RemoteChain: opening the session over a route, what the hops send, closing it.
#include "client/remote_chain.h"

#include <random>

#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::client {

std::string RandomHex128() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 2; ++i) {
    uint64_t x = rng();
    for (int j = 0; j < 16; ++j, x >>= 4) s += hex[x & 15];
  }
  return s;
}

absl::StatusOr<std::unique_ptr<RemoteChain>> RemoteChain::Open(const RemoteChainOptions& options) {
  if (!options.routes) return absl::InvalidArgumentError("no route provider");
  auto chain = std::unique_ptr<RemoteChain>(new RemoteChain());
  chain->options_ = options;
  // The first op goes out behind the opens, without waiting for them (Wait reopens when a hop
  // refuses).
  RETURN_IF_ERROR(chain->OpenRoute(/*wait_for_opens=*/false));
  return chain;
}

absl::Status RemoteChain::OpenRoute(bool wait_for_opens, absl::Status refused) {
  absl::Status last = refused.ok() ? absl::UnavailableError("no route") : refused;
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::vector<std::string> exclude;
    {
      absl::MutexLock lock(&mu_);
      exclude = ExcludedLocked();
    }
    auto routes = options_.routes(0, exclude);
    if (!routes.ok() && (attempt > 0 || !refused.ok())) {
      // The nodes that refused are avoided for a while: their refusal is the news.
      return absl::Status(
          last.code(),
          StrCat(last.message(), " (and no other route: ", routes.status().message(), ")"));
    }
    if (!routes.ok()) return routes.status();
    std::vector<const v1::Route*> candidates = {&routes->route()};
    for (const v1::Route& r : routes->alternates()) candidates.push_back(&r);
    for (const v1::Route* route : candidates) {
      auto hops = OpenHops(*route, 0, next_op_, true, wait_for_opens);
      if (hops.ok()) {
        absl::MutexLock lock(&mu_);
        hops_ = std::move(*hops);
        return absl::OkStatus();
      }
      last = hops.status();
    }
  }
  return last;
}

absl::Status RemoteChain::Reopen(const Failure& failure) {
  std::vector<std::unique_ptr<Hop>> old;
  {
    absl::MutexLock lock(&mu_);
    STRATA_LOG(Info) << failure.status << "; opening the session on another route";
    BanLocked(hops_[failure.hop]->hop.node_id());  // (Wait returns refusals that are final)
    old.swap(hops_);
  }
  for (auto& h : old) h->stream->Close(absl::Milliseconds(100));
  return OpenRoute(/*wait_for_opens=*/true, failure.status);
}

RemoteChain::~RemoteChain() { Close(); }

void RemoteChain::EndWrites() {
  std::vector<Hop*> hops;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
    closing_.swap(hops_);
    for (auto& h : closing_) hops.push_back(h.get());
  }
  for (Hop* h : hops) h->stream->EndWrites();
}

void RemoteChain::Close() {
  EndWrites();
  std::vector<std::unique_ptr<Hop>> hops;
  {
    absl::MutexLock lock(&mu_);
    hops.swap(closing_);
  }
  for (auto& h : hops) h->stream->Close(absl::Seconds(2));
}

absl::StatusOr<std::vector<std::unique_ptr<RemoteChain::Hop>>> RemoteChain::OpenHops(
    const v1::Route& route,
    int first_index,
    uint64_t first_op_seq,
    bool first_from_client,
    bool wait_for_opens) {
  if (route.hops_size() == 0) return absl::UnavailableError("the route has no hops");
  const std::string session_id = RandomHex128(), token = RandomHex128();
  std::vector<std::unique_ptr<Hop>> hops;
  for (int i = 0; i < route.hops_size(); ++i) {
    auto hop = std::make_unique<Hop>();
    hop->hop = route.hops(i);
    hop->index = first_index + i;
    hop->session_id = session_id;
    hop->token = token;
    hops.push_back(std::move(hop));
  }
  for (int i = 0; i < route.hops_size(); ++i) {
    v1::OpenSession o;
    o.set_protocol_version(v1::PROTOCOL_VERSION_1);
    o.set_session_id(session_id);
    o.set_token(token);
    o.set_model_id(options_.model_id);
    o.set_first_layer(route.hops(i).first_layer());
    o.set_last_layer(route.hops(i).last_layer());
    if (i + 1 < route.hops_size()) o.set_next_address(route.hops(i + 1).address());
    o.set_max_length(options_.max_length);
    o.set_hop_index(first_index + i);
    o.set_wire_dtype(options_.wire_dtype);
    o.set_want_boundary_copies(i + 1 < route.hops_size());
    o.set_first_op_seq(first_op_seq);
    o.set_first_op_from_client(i == 0 && first_from_client);
    Hop* h = hops[i].get();
    h->stream = std::make_unique<HopStream>(
        h->hop.address(), o, [this, h](const v1::SessionResponse* m, const grpc::Status& end) {
          OnMessage(h, m, end);
        });
  }
  const absl::Time deadline = absl::Now() + options_.open_timeout;
  if (!wait_for_opens) {
    absl::MutexLock lock(&mu_);
    for (auto& h : hops) HeardFrom(*h).open_deadline = deadline;
    return hops;
  }
  absl::Status failure = AwaitOpens(hops, deadline);
  if (!failure.ok()) {
    for (auto& h : hops) h->stream->Close(absl::Milliseconds(200));
    return failure;
  }
  return hops;
}

absl::Status RemoteChain::AwaitOpens(const std::vector<std::unique_ptr<Hop>>& hops,
                                     absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  for (auto& h : hops) {
    const bool answered = WaitUntil(deadline, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return HeardFrom(*h).opened || HeardFrom(*h).ended;
    });
    const Heard& heard = HeardFrom(*h);
    if (heard.opened) continue;
    absl::Status failure =
        !answered
            ? absl::DeadlineExceededError(StrCat(
                  "hop ", h->hop.node_id(), " (", h->hop.address(), ") did not answer the open"))
            : absl::Status(heard.end_status.code(),
                           StrCat("hop ",
                                  h->hop.node_id(),
                                  " (",
                                  h->hop.address(),
                                  ") refused the session: ",
                                  heard.end_status.message()));
    if (Retryable(failure)) BanLocked(h->hop.node_id());
    return failure;
  }
  return absl::OkStatus();
}

void RemoteChain::OnMessage(Hop* h, const v1::SessionResponse* m, const grpc::Status& end) {
  absl::MutexLock lock(&mu_);
  if (m == nullptr) {
    OnEnded(h, end);
    cv_.SignalAll();
    return;
  }
  Heard& heard = HeardFrom(*h);
  switch (m->kind_case()) {
    case v1::SessionResponse::kOpened:
      heard.opened = true;
      break;
    case v1::SessionResponse::kResult:
      if (Reply* r = ReplyFor(*h, m->result().op_seq())) {
        r->done = true;
        r->hop = h->index;
        r->result = m->result();
      }
      break;
    case v1::SessionResponse::kDone:
      if (Reply* r = ReplyFor(*h, m->done().op_seq())) {
        r->done = true;
        r->hop = h->index;
      }
      break;
    case v1::SessionResponse::kError:
      if (Reply* r = ReplyFor(*h, m->error().op_seq())) {
        r->done = true;
        r->hop = h->index;
        r->status =
            StatusFromCode(m->error().code(), StrCat(h->hop.node_id(), ": ", m->error().message()));
      }
      break;
    case v1::SessionResponse::kBoundary: {
      const v1::BoundaryStates& b = m->boundary();
      if (b.rows_size() == 0) {  // the op passed this hop; nothing to keep
        heard.copies.insert(b.op_seq());
        break;
      }
      std::vector<float> values;
      if (transport::DecodeRows(b.hidden(), b.rows_size(), options_.hidden_size, &values).ok()) {
        inputs_[b.boundary_layer()][b.op_seq()] = std::move(values);
        heard.copies.insert(b.op_seq());
      }
      break;
    }
    case v1::SessionResponse::kNextHopLost:
      // A loss reported for a link replaced since (by a Redirect) is old news.
      if (m->next_hop_lost().last_op_seq() >= heard.link_since) heard.next_lost = true;
      break;
    case v1::SessionResponse::kDraining:
      heard.draining = true;
      break;
    case v1::SessionResponse::kState:
      heard.state = m->state();
      break;
    default:
      break;
  }
  cv_.SignalAll();
}

void RemoteChain::OnEnded(Hop* h, const grpc::Status& end) {
  Heard& heard = HeardFrom(*h);
  heard.ended = true;
  heard.end_status = end.ok()
                         ? absl::UnavailableError(StrCat(h->hop.node_id(), " closed the session"))
                         : FromGrpcStatus(end);
  if (!heard.opened && !end.ok()) {
    // Refused at open. Layers outside the node's span mean a stale route: another may do.
    const absl::StatusCode code = end.error_code() == grpc::StatusCode::OUT_OF_RANGE
                                      ? absl::StatusCode::kUnavailable
                                      : heard.end_status.code();
    heard.end_status = absl::Status(code,
                                    StrCat("hop ",
                                           h->hop.node_id(),
                                           " (",
                                           h->hop.address(),
                                           ") refused the session: ",
                                           end.error_message()));
  }
}

RemoteChain::Reply* RemoteChain::ReplyFor(const Hop& hop, uint64_t seq) {
  if (replay_seq_ != 0 && seq == replay_seq_ && hop.index >= replay_first_hop_) {
    return &replay_reply_;
  }
  auto it = log_.find(seq);
  return it == log_.end() ? nullptr : &it->second.reply;
}

absl::StatusOr<std::vector<v1::SessionState>> RemoteChain::State(absl::Duration timeout) {
  ReapControl();
  v1::SessionRequest req;
  req.mutable_state();
  absl::MutexLock lock(&mu_);
  for (auto& h : hops_) {
    HeardFrom(*h).state.reset();
    h->stream->Write(req);
  }
  std::vector<v1::SessionState> out;
  for (auto& h : hops_) {
    const bool reported =
        WaitUntil(absl::Now() + timeout, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return HeardFrom(*h).state.has_value() || HeardFrom(*h).ended;
        });
    if (!reported || !HeardFrom(*h).state) {
      return absl::DeadlineExceededError(StrCat(h->hop.node_id(), " did not report its state"));
    }
    out.push_back(*HeardFrom(*h).state);
  }
  return out;
}

std::vector<HopInfo> RemoteChain::Hops() const {
  absl::MutexLock lock(&mu_);
  std::vector<HopInfo> out;
  for (const auto& h : hops_) {
    out.push_back({h->hop.node_id(), h->hop.address(), h->hop.first_layer(), h->hop.last_layer()});
  }
  return out;
}

ChainStats RemoteChain::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace strata::client
