#include "client/remote_chain.h"

#include <algorithm>
#include <cstring>
#include <random>

#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::client {

// One hop of the current route and what it has told us.
struct RemoteChain::Hop {
  v1::Hop hop;
  int index = 0;  // position in the route when opened
  std::string session_id, token;
  std::unique_ptr<HopStream> stream;
  bool opened = false;          // guarded by mu_
  absl::Time open_deadline = absl::InfiniteFuture();  // for the answer to the open
  bool ended = false;           // guarded by mu_
  absl::Status end_status;      // guarded by mu_
  bool next_lost = false;       // guarded by mu_: it lost its next hop
  uint64_t link_since = 0;      // guarded by mu_: op_seq from which its current next link counts
  bool draining = false;        // guarded by mu_: it is leaving
  std::set<uint64_t> copies;    // guarded by mu_: op_seqs it sent boundary copies for
  std::optional<v1::SessionState> state;  // guarded by mu_: the last state it reported
};

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

void RemoteChain::BanLocked(const std::string& node_id) {
  constexpr absl::Duration kBanBase = absl::Seconds(2), kBanMax = absl::Seconds(60);
  Ban& ban = bans_[node_id];
  absl::Duration length = kBanBase;
  for (int i = 0; i < ban.failures && length < kBanMax; ++i) length *= 2;
  ban.failures++;
  ban.until = absl::Now() + std::min(length, kBanMax);
}

std::vector<std::string> RemoteChain::ExcludedLocked() const {
  std::vector<std::string> out;
  const absl::Time now = absl::Now();
  for (const auto& [id, ban] : bans_) {
    if (ban.until > now) out.push_back(id);
  }
  return out;
}

bool RemoteChain::Retryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kCancelled:
      return false;  // the request itself is wrong: another route would say the same
    default:
      return true;
  }
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
      std::lock_guard<std::mutex> lock(mu_);
      exclude = ExcludedLocked();
    }
    auto routes = options_.routes(0, exclude);
    if (!routes.ok() && (attempt > 0 || !refused.ok())) {
      // The nodes that refused are avoided for a while: their refusal is the news.
      return absl::Status(last.code(), StrCat(last.message(), " (and no other route: ",
                                              routes.status().message(), ")"));
    }
    if (!routes.ok()) return routes.status();
    std::vector<const v1::Route*> candidates = {&routes->route()};
    for (const v1::Route& r : routes->alternates()) candidates.push_back(&r);
    for (const v1::Route* route : candidates) {
      auto hops = OpenHops(*route, 0, next_op_, true, wait_for_opens);
      if (hops.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
    hops.swap(closing_);
  }
  for (auto& h : hops) h->stream->Close(absl::Seconds(2));
}

ChainCloser::ChainCloser() : thread_([this] { Loop(); }) {}

ChainCloser::~ChainCloser() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ChainCloser::Close(std::unique_ptr<RemoteChain> chain) {
  if (chain == nullptr) return;
  chain->EndWrites();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(chain));
  }
  cv_.notify_all();
}

void ChainCloser::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    std::vector<std::unique_ptr<RemoteChain>> chains;
    chains.swap(queue_);
    lock.unlock();
    for (auto& c : chains) c->Close();
    chains.clear();
    lock.lock();
  }
}

absl::StatusOr<std::vector<std::unique_ptr<RemoteChain::Hop>>> RemoteChain::OpenHops(
    const v1::Route& route, int first_index, uint64_t first_op_seq, bool first_from_client,
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
        h->hop.address(), o,
        [this, h](const v1::SessionResponse* m, const grpc::Status& end) { OnMessage(h, m, end); });
  }
  const absl::Time deadline = absl::Now() + options_.open_timeout;
  if (!wait_for_opens) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& h : hops) h->open_deadline = deadline;
    return hops;
  }
  absl::Status failure;
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (auto& h : hops) {
      const bool answered = cv_.wait_until(lock, absl::ToChronoTime(deadline),
                                           [&] { return h->opened || h->ended; });
      if (h->opened) continue;
      failure = !answered
                    ? absl::DeadlineExceededError(StrCat("hop ", h->hop.node_id(), " (",
                                                         h->hop.address(),
                                                         ") did not answer the open"))
                    : absl::Status(h->end_status.code(),
                                   StrCat("hop ", h->hop.node_id(), " (", h->hop.address(),
                                          ") refused the session: ", h->end_status.message()));
      if (Retryable(failure)) BanLocked(h->hop.node_id());
      break;
    }
  }
  if (!failure.ok()) {
    for (auto& h : hops) h->stream->Close(absl::Milliseconds(200));
    return failure;
  }
  return hops;
}

void RemoteChain::OnMessage(Hop* h, const v1::SessionResponse* m, const grpc::Status& end) {
  std::lock_guard<std::mutex> lock(mu_);
  if (m == nullptr) {
    h->ended = true;
    h->end_status = end.ok() ? absl::UnavailableError(StrCat(h->hop.node_id(), " closed the session"))
                             : FromGrpcStatus(end);
    if (!h->opened && !end.ok()) {
      // Refused at open. Layers outside the node's span mean a stale route: another may do.
      const absl::StatusCode code = end.error_code() == grpc::StatusCode::OUT_OF_RANGE
                                        ? absl::StatusCode::kUnavailable
                                        : h->end_status.code();
      h->end_status = absl::Status(code, StrCat("hop ", h->hop.node_id(), " (", h->hop.address(),
                                                ") refused the session: ", end.error_message()));
    }
    cv_.notify_all();
    return;
  }
  // The replay and the Redirect share a number in two domains (new hops / kept hops).
  auto reply_for = [&](uint64_t seq) -> Reply* {
    if (replay_seq_ != 0 && seq == replay_seq_ && h->index >= replay_first_hop_) {
      return &replay_reply_;
    }
    auto it = log_.find(seq);
    return it == log_.end() ? nullptr : &it->second.reply;
  };
  switch (m->kind_case()) {
    case v1::SessionResponse::kOpened:
      h->opened = true;
      break;
    case v1::SessionResponse::kResult:
      if (Reply* r = reply_for(m->result().op_seq())) {
        r->done = true;
        r->hop = h->index;
        r->result = m->result();
      }
      break;
    case v1::SessionResponse::kDone:
      if (Reply* r = reply_for(m->done().op_seq())) {
        r->done = true;
        r->hop = h->index;
      }
      break;
    case v1::SessionResponse::kError:
      if (Reply* r = reply_for(m->error().op_seq())) {
        r->done = true;
        r->hop = h->index;
        r->status = StatusFromCode(m->error().code(),
                                   StrCat(h->hop.node_id(), ": ", m->error().message()));
      }
      break;
    case v1::SessionResponse::kBoundary: {
      const v1::BoundaryStates& b = m->boundary();
      if (b.rows_size() == 0) {  // the op passed this hop; nothing to keep
        h->copies.insert(b.op_seq());
        break;
      }
      std::vector<float> values;
      if (transport::DecodeRows(b.hidden(), b.rows_size(), options_.hidden_size, &values).ok()) {
        inputs_[b.boundary_layer()][b.op_seq()] = std::move(values);
        h->copies.insert(b.op_seq());
      }
      break;
    }
    case v1::SessionResponse::kNextHopLost:
      // A loss reported for a link replaced since (by a Redirect) is old news.
      if (m->next_hop_lost().last_op_seq() >= h->link_since) h->next_lost = true;
      break;
    case v1::SessionResponse::kDraining:
      h->draining = true;
      break;
    case v1::SessionResponse::kState:
      h->state = m->state();
      break;
    default:
      break;
  }
  cv_.notify_all();
}

absl::Duration RemoteChain::StepDeadline(int64_t rows) const {
  // Without a measurement for ops this size, allow the longest wait.
  if (ema_base_ms_ < 0 || (rows > 1 && ema_row_ms_ < 0)) return options_.step_timeout;
  const double expected = ema_base_ms_ + std::max(0.0, ema_row_ms_) * static_cast<double>(rows);
  return std::min(options_.step_timeout,
                  absl::Milliseconds(4 * expected) + options_.min_step_timeout);
}

void RemoteChain::Learn(int64_t rows, double ms) {
  constexpr double a = 0.2;
  if (rows == 1) {
    ema_base_ms_ = ema_base_ms_ < 0 ? ms : (1 - a) * ema_base_ms_ + a * ms;
  } else if (ema_base_ms_ >= 0) {
    const double per_row = std::max(0.0, (ms - ema_base_ms_) / static_cast<double>(rows - 1));
    ema_row_ms_ = ema_row_ms_ < 0 ? per_row : (1 - a) * ema_row_ms_ + a * per_row;
  }
}

std::variant<v1::ForwardResult, RemoteChain::Failure> RemoteChain::Await(
    uint64_t seq, int64_t rows, std::unique_lock<std::mutex>& lock, Reply* reply,
    size_t first_hop) {
  Failure failure;
  auto settled = [&] {
    const Reply& r = *reply;
    if (r.done) return true;
    for (size_t i = 0; i < hops_.size(); ++i) {
      if (hops_[i]->ended) {
        // A hop that ended before it opened refused the session (or could not be reached):
        // the route avoids it, but it is not reported as failed.
        failure = {static_cast<int>(i), hops_[i]->end_status, hops_[i]->opened};
        return true;
      }
      if (hops_[i]->next_lost && i + 1 < hops_.size()) {
        failure = {static_cast<int>(i + 1),
                   absl::UnavailableError(StrCat(hops_[i + 1]->hop.node_id(),
                                                 " is unreachable from ",
                                                 hops_[i]->hop.node_id())),
                   true};
        return true;
      }
    }
    return false;
  };
  const absl::Duration deadline = StepDeadline(rows);
  const absl::Time until = absl::Now() + deadline;
  bool answered = false;
  while (true) {
    // Hops that have not answered their open yet must do so within the open timeout.
    absl::Time wake = until;
    for (const auto& h : hops_) {
      if (!h->opened && !h->ended) wake = std::min(wake, h->open_deadline);
    }
    answered = cv_.wait_until(lock, absl::ToChronoTime(wake), settled);
    if (answered || absl::Now() >= until) break;
    for (size_t i = 0; i < hops_.size(); ++i) {
      const Hop& h = *hops_[i];
      if (!h.opened && !h.ended && absl::Now() >= h.open_deadline) {
        return Failure{static_cast<int>(i),
                       absl::DeadlineExceededError(StrCat("hop ", h.hop.node_id(), " (",
                                                          h.hop.address(),
                                                          ") did not answer the open")),
                       false};
      }
    }
  }
  if (!answered) {
    // Stuck: the first hop (from where the op entered) that did not pass it on is the culprit.
    size_t stuck = hops_.size() - 1;
    for (size_t i = first_hop; i + 1 < hops_.size(); ++i) {
      if (!hops_[i]->copies.contains(seq)) {
        stuck = i;
        break;
      }
    }
    return Failure{static_cast<int>(stuck),
                   absl::DeadlineExceededError(StrCat(hops_[stuck]->hop.node_id(),
                                                      " did not answer within ",
                                                      absl::FormatDuration(deadline))),
                   true};
  }
  Reply& r = *reply;
  if (r.done) {
    if (r.status.ok()) return r.result;
    int hop = 0;
    for (size_t i = 0; i < hops_.size(); ++i) {
      if (hops_[i]->index == r.hop) hop = static_cast<int>(i);
    }
    return Failure{hop, r.status, true};
  }
  return failure;
}

uint64_t RemoteChain::Submit(v1::Op op, std::vector<model::Row> rows, std::vector<float> hidden) {
  // A hop that announced it is leaving is replaced before it is sent more work.
  std::optional<Failure> leaving;
  bool quiet = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = log_.rbegin(); it != log_.rend() && quiet; ++it) {
      quiet = it->second.completed || it->second.abandoned || it->second.kind == v1::Op::kRedirect;
    }
    for (size_t i = 0; quiet && i < hops_.size(); ++i) {
      if (hops_[i]->draining) {
        leaving = Failure{static_cast<int>(i),
                          absl::UnavailableError(StrCat(hops_[i]->hop.node_id(), " is leaving")),
                          false};
        break;
      }
    }
  }
  if (leaving) {
    // Only between ops (nothing in flight), so nothing is abandoned.
    absl::Status moved = Failover(*leaving, {});
    if (!moved.ok()) STRATA_LOG(Warning) << "could not move off a leaving node: " << moved;
  }
  const uint64_t seq = next_op_++;
  op.set_op_seq(seq);
  {
    std::lock_guard<std::mutex> lock(mu_);
    OpRecord& rec = log_[seq];
    rec.kind = op.kind_case();
    rec.rows = std::move(rows);
    rec.n_rows = std::max<int64_t>(1, static_cast<int64_t>(rec.rows.size()));
    for (const model::Row& r : rec.rows) spec_seqs_ |= (r.seqs | r.attend) & ~model::SeqBit(0);
    if (op.has_truncate()) {
      rec.seq = op.truncate().seq();
      rec.from_pos = op.truncate().from_pos();
    } else if (op.has_keep()) {
      rec.seq = op.keep().seq();
    } else if (op.has_commit()) {
      rec.seq = op.commit().seq();
      rec.from_pos = op.commit().until_pos();
    }
    if (op.has_forward()) inputs_[0][seq] = std::move(hidden);
    rec.sent = absl::Now();
    rec.op = op;
  }
  v1::SessionRequest req;
  *req.mutable_op() = std::move(op);
  hops_[0]->stream->Write(req);
  return seq;
}

absl::StatusOr<v1::ForwardResult> RemoteChain::Wait(uint64_t seq, bool resend) {
  int failovers = 0;
  absl::Time failure_time;
  bool recovering = false;
  while (true) {
    std::unique_lock<std::mutex> lock(mu_);
    if (closed_) return absl::CancelledError("the chain is closed");
    auto rec = log_.find(seq);
    if (rec == log_.end()) return absl::InvalidArgumentError(StrCat("no op ", seq));
    if (rec->second.abandoned) {
      return absl::AbortedError("the route changed while this run was in flight");
    }
    int in_flight = 0;
    for (auto it = log_.find(seq); it != log_.begin();) {
      --it;
      in_flight += !it->second.completed && !it->second.abandoned;
    }
    auto outcome = Await(seq, rec->second.n_rows * (1 + in_flight), lock, &rec->second.reply);
    if (auto* result = std::get_if<v1::ForwardResult>(&outcome)) {
      rec->second.completed = true;
      rec->second.op.Clear();  // kept only for a resend
      if (in_flight == 0 && rec->second.kind == v1::Op::kForward) {
        Learn(rec->second.n_rows, absl::ToDoubleMilliseconds(absl::Now() - rec->second.sent));
      }
      if (recovering) {
        stats_.last_recovery_ms = absl::ToDoubleMilliseconds(absl::Now() - failure_time);
      }
      answered_any_ = true;
      return std::move(*result);
    }
    Failure failure = std::get<Failure>(outcome);
    if (!Retryable(failure.status)) {
      rec->second.completed = true;  // answered (with an error): not in flight any more
      return failure.status;
    }
    // Before any op was answered, a hop that never opened refused the session or did not answer
    // its open: the session opens again elsewhere, now waiting for the opens, as a fresh one
    // would (fails fast with the refusal where no route has room; nothing is reported).
    const bool refused = !answered_any_ && !hops_[failure.hop]->opened;
    // Every op still in flight is abandoned by the failover.
    std::vector<uint64_t> abandoned;
    for (auto& [s, r] : log_) {
      if (!r.completed && !r.reply.done && !r.abandoned && r.kind != v1::Op::kRedirect) {
        r.abandoned = true;
        abandoned.push_back(s);
      }
    }
    v1::Op again = rec->second.op;
    std::vector<model::Row> rows = rec->second.rows;
    std::vector<float> hidden = inputs_[0].contains(seq) ? inputs_[0][seq] : std::vector<float>();
    lock.unlock();
    if (++failovers > options_.max_failovers_per_op) {
      return absl::Status(failure.status.code(),
                          StrCat("giving up after ", options_.max_failovers_per_op,
                                 " failovers: ", failure.status.message()));
    }
    if (!recovering) failure_time = absl::Now();
    recovering = true;
    RETURN_IF_ERROR(refused ? Reopen(failure) : Failover(failure, abandoned));
    if (!resend) return absl::AbortedError("the route changed while this run was in flight");
    seq = Submit(std::move(again), std::move(rows), std::move(hidden));
  }
}

absl::StatusOr<v1::ForwardResult> RemoteChain::RunOp(v1::Op op, std::vector<model::Row> rows,
                                                     std::vector<float> hidden) {
  return Wait(Submit(std::move(op), std::move(rows), std::move(hidden)), /*resend=*/true);
}

absl::StatusOr<std::vector<v1::SessionState>> RemoteChain::State(absl::Duration timeout) {
  ReapControl();
  v1::SessionRequest req;
  req.mutable_state();
  std::unique_lock<std::mutex> lock(mu_);
  for (auto& h : hops_) {
    h->state.reset();
    h->stream->Write(req);
  }
  std::vector<v1::SessionState> out;
  for (auto& h : hops_) {
    if (!cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                      [&] { return h->state.has_value() || h->ended; }) ||
        !h->state) {
      return absl::DeadlineExceededError(StrCat(h->hop.node_id(), " did not report its state"));
    }
    out.push_back(*h->state);
  }
  return out;
}

void RemoteChain::Cancel(std::span<const uint64_t> seqs) {
  v1::SessionRequest req;
  for (uint64_t s : seqs) req.mutable_cancel()->add_op_seqs(s);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& h : hops_) h->stream->Write(req);
}

std::optional<std::vector<RemoteChain::Cell>> RemoteChain::History(int boundary) const {
  std::vector<Cell> cells;
  auto inputs = inputs_.find(boundary);
  const int width = options_.hidden_size;
  uint64_t start = 0;
  if (auto snap = snapshot_seq_.find(boundary); snap != snapshot_seq_.end()) {
    start = snap->second;
    const std::vector<model::Row>& rows = snapshot_rows_.at(start);
    if (inputs == inputs_.end() || !inputs->second.contains(start)) return std::nullopt;
    const float* h = inputs->second.at(start).data();
    for (size_t i = 0; i < rows.size(); ++i) cells.push_back({rows[i].pos, rows[i].seqs, h + i * width});
  }
  for (auto it = log_.upper_bound(start); it != log_.end(); ++it) {
    const OpRecord& rec = it->second;
    // A forward counts once it took effect on every hop: answered OK by the last one (waited
    // for or not). An abandoned forward is redone by its caller after the failover, so it is not
    // history even when its answer arrived late: replaying it too would put its rows into the
    // cache twice. A truncate, keep or commit is the client's decision, made on cells it knows:
    // it counts unless a hop refused it (the failover sends the interrupted ones again).
    if (rec.kind == v1::Op::kForward) {
      if (rec.abandoned || !rec.reply.done || !rec.reply.status.ok()) continue;
    } else if (rec.reply.done && !rec.reply.status.ok()) {
      continue;
    }
    switch (rec.kind) {
      case v1::Op::kForward: {
        if (inputs == inputs_.end()) return std::nullopt;
        auto in = inputs->second.find(it->first);
        if (in == inputs->second.end()) return std::nullopt;
        for (size_t i = 0; i < rec.rows.size(); ++i) {
          cells.push_back({rec.rows[i].pos, rec.rows[i].seqs, in->second.data() + i * width});
        }
        break;
      }
      case v1::Op::kTruncate: {
        const model::SeqMask bit = model::SeqBit(rec.seq);
        for (Cell& c : cells) {
          if ((c.seqs & bit) && c.pos >= rec.from_pos) c.seqs &= ~bit;
        }
        std::erase_if(cells, [](const Cell& c) { return c.seqs == 0; });
        break;
      }
      case v1::Op::kKeep: {
        const model::SeqMask bit = model::SeqBit(rec.seq);
        for (Cell& c : cells) c.seqs &= bit;
        std::erase_if(cells, [](const Cell& c) { return c.seqs == 0; });
        break;
      }
      case v1::Op::kCommit: {
        const model::SeqMask bit = model::SeqBit(rec.seq);
        for (Cell& c : cells) {
          if ((c.seqs & bit) && c.pos < rec.from_pos) c.seqs |= model::SeqBit(0);
          c.seqs &= model::SeqBit(0);
        }
        std::erase_if(cells, [](const Cell& c) { return c.seqs == 0; });
        break;
      }
      default:
        break;
    }
  }
  // Failover rebuilds the committed text only; speculation is disposable.
  for (Cell& c : cells) c.seqs &= model::SeqBit(0);
  std::erase_if(cells, [](const Cell& c) { return c.seqs == 0; });
  std::stable_sort(cells.begin(), cells.end(),
                   [](const Cell& a, const Cell& b) { return a.pos < b.pos; });
  return cells;
}

absl::Status RemoteChain::Failover(Failure failure, const std::vector<uint64_t>& abandoned) {
  std::vector<std::unique_ptr<Hop>> dropped;
  int keep = 0;  // hops [0, keep) stay
  int boundary = 0;
  std::vector<Cell> cells;
  std::string failed_id;
  {
    std::unique_lock<std::mutex> lock(mu_);
    const Hop& failed = *hops_[failure.hop];
    failed_id = failed.hop.node_id();
    STRATA_LOG(Warning) << "hop " << failed.hop.node_id() << " (layers "
                        << failed.hop.first_layer() << "-" << failed.hop.last_layer() - 1
                        << ") failed: " << failure.status;
    BanLocked(failed.hop.node_id());
    if (failure.report && options_.report_failure) {
      lock.unlock();
      options_.report_failure(failed.hop.node_id(), failure.status);
      lock.lock();
    }
    // Rebuild from the failed hop's first layer if we hold its inputs there, else from an
    // earlier boundary. Copies of the last ops may still be on their way: wait a moment.
    keep = failure.hop;
    while (true) {
      boundary = keep == 0 ? 0 : hops_[keep]->hop.first_layer();
      std::optional<std::vector<Cell>> history;
      cv_.wait_for(lock, std::chrono::seconds(1), [&] {
        history = History(boundary);
        return history.has_value() || (keep > 0 && hops_[keep - 1]->ended);
      });
      if (history) {
        cells = std::move(*history);
        break;
      }
      --keep;
    }
    for (size_t i = keep; i < hops_.size(); ++i) dropped.push_back(std::move(hops_[i]));
    hops_.resize(keep);
    if (keep > 0) {
      // The last kept hop's old link is gone with the dropped hops; reports about it are old
      // news from now on (its next link will count from the Redirect, op next_op_).
      hops_[keep - 1]->next_lost = false;
      hops_[keep - 1]->link_since = next_op_;
    }
    stats_.failovers++;
  }
  for (auto& h : dropped) h->stream->Close(absl::Milliseconds(100));

  // Numbering: the new hops start at R. With a replay, R is the replay (sent by us to the first
  // new hop); with kept hops, R is also the Redirect on the kept hops, which the new hops never
  // see. Either way the next op after recovery is R + 1 — except with neither, where it is R.
  const uint64_t R = next_op_;
  const bool replay = !cells.empty();
  const uint64_t first_seq = (replay || keep == 0) ? R : R + 1;

  const absl::Time give_up = absl::Now() + options_.no_route_wait;
  absl::Duration backoff = absl::Milliseconds(100);
  std::mt19937 jitter(static_cast<uint32_t>(absl::ToUnixNanos(absl::Now())));
  absl::Status last;
  std::vector<std::unique_ptr<Hop>> fresh;
  while (fresh.empty()) {
    std::vector<std::string> exclude;
    {
      std::lock_guard<std::mutex> lock(mu_);
      exclude = ExcludedLocked();
    }
    auto routes = options_.routes(boundary, exclude);
    if (!routes.ok() && exclude.size() > 1) {
      // Bans are a preference: a node that failed earlier may be back (restarted). Avoid only
      // the node that failed just now, then nothing (opening a dead hop fails fast).
      exclude = {failed_id};
      routes = options_.routes(boundary, exclude);
    }
    if (!routes.ok() && !exclude.empty()) {
      exclude.clear();
      routes = options_.routes(boundary, exclude);
    }
    last = routes.status();
    if (routes.ok()) {
      std::vector<const v1::Route*> candidates = {&routes->route()};
      for (const v1::Route& r : routes->alternates()) candidates.push_back(&r);
      for (const v1::Route* route : candidates) {
        bool usable = true;  // skip routes through nodes that failed us meanwhile
        for (const v1::Hop& h : route->hops()) {
          usable = usable && std::find(exclude.begin(), exclude.end(), h.node_id()) == exclude.end();
        }
        if (!usable) continue;
        auto hops = OpenHops(*route, keep, first_seq, replay);
        if (hops.ok()) {
          fresh = std::move(*hops);
          break;
        }
        STRATA_LOG(Warning) << "replacement route refused: " << hops.status();
        last = hops.status();
      }
    }
    if (!fresh.empty()) break;
    if (absl::Now() >= give_up) {
      return absl::Status(last.code(),
                          StrCat("no route to replace the failed hop: ", last.message()));
    }
    // Bounded retries, exponential back-off with jitter.
    std::uniform_real_distribution<double> u(0.5, 1.5);
    absl::SleepFor(std::min(backoff * u(jitter), give_up - absl::Now()));
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& h : fresh) hops_.push_back(std::move(h));
  }

  // Rebuild the new hops' KV: the inputs held for `boundary`, in one forward.
  if (replay) {
    v1::Op fwd;
    fwd.set_op_seq(R);
    std::vector<model::Row> rows;
    std::vector<float> values;
    values.reserve(cells.size() * options_.hidden_size);
    for (const Cell& c : cells) {
      v1::RowMeta* m = fwd.mutable_forward()->add_rows();
      m->set_pos(c.pos);
      m->set_seqs(c.seqs);
      rows.push_back({c.pos, c.seqs});
      values.insert(values.end(), c.hidden, c.hidden + options_.hidden_size);
    }
    fwd.mutable_forward()->add_out_rows(static_cast<int32_t>(cells.size()) - 1);
    transport::EncodeRows(values.data(), static_cast<int64_t>(cells.size()), options_.hidden_size,
                          options_.wire_dtype, fwd.mutable_forward()->mutable_hidden());
    {
      std::lock_guard<std::mutex> lock(mu_);
      snapshot_rows_[R] = rows;
      for (size_t i = keep + 1; i < hops_.size(); ++i) {
        snapshot_seq_[hops_[i]->hop.first_layer()] = R;
      }
      replay_seq_ = R;
      replay_first_hop_ = keep;
      replay_reply_ = Reply();
    }
    v1::SessionRequest req;
    *req.mutable_op() = fwd;
    const absl::Time t0 = absl::Now();
    hops_[keep]->stream->Write(req);
    std::unique_lock<std::mutex> lock(mu_);
    auto outcome = Await(R, static_cast<int64_t>(cells.size()), lock, &replay_reply_, keep);
    replay_seq_ = 0;
    if (auto* f = std::get_if<Failure>(&outcome)) {
      Failure again = *f;
      lock.unlock();
      return Failover(again, abandoned);  // the interrupted ops still need their rollback
    }
    stats_.last_replay_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    stats_.last_replay_rows = static_cast<int>(cells.size());
  }

  // Re-point the last kept hop at the new ones (ordered through the kept hops).
  if (keep > 0) {
    v1::Op r;
    r.set_op_seq(R);
    v1::Redirect* rd = r.mutable_redirect();
    rd->set_target_hop(keep - 1);
    rd->set_next_address(hops_[keep]->hop.address());
    rd->set_next_session_id(hops_[keep]->session_id);
    rd->set_next_token(hops_[keep]->token);
    {
      std::lock_guard<std::mutex> lock(mu_);
      log_[R].kind = v1::Op::kRedirect;
    }
    v1::SessionRequest req;
    *req.mutable_op() = r;
    hops_[0]->stream->Write(req);
    std::unique_lock<std::mutex> lock(mu_);
    auto outcome = Await(R, 1, lock, &log_[R].reply);
    if (auto* f = std::get_if<Failure>(&outcome)) {
      Failure again = *f;
      lock.unlock();
      next_op_ = R + 1;
      return Failover(again, abandoned);  // the interrupted ops still need their rollback
    }
    log_[R].completed = true;
  }
  next_op_ = (keep > 0 || replay) ? R + 1 : R;

  // Interrupted truncates, keeps and commits are part of the rebuilt history; the kept hops may
  // not have applied them, so they go again, in order and before the rollback below (a keep of
  // sequence 0 would otherwise drop cells a commit had still to move there). Each is idempotent.
  if (keep > 0) {
    std::vector<v1::Op> control;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t seq : abandoned) {
        const OpRecord& rec = log_.at(seq);
        if (rec.kind == v1::Op::kTruncate || rec.kind == v1::Op::kKeep ||
            rec.kind == v1::Op::kCommit) {
          control.push_back(rec.op);
        }
      }
    }
    for (v1::Op& op : control) {
      auto done = RunOp(std::move(op), {}, {});
      if (!done.ok()) return done.status();
    }
  }

  // The kept hops drop whatever the interrupted ops added (the new hops never had it), and any
  // speculation: the new hops hold the committed text only.
  if (keep > 0) {
    std::map<int, int32_t> from;  // sequence -> first position the ops added
    bool speculation = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      speculation = spec_seqs_ != 0;
      for (uint64_t seq : abandoned) {
        const OpRecord& rec = log_.at(seq);
        if (rec.kind != v1::Op::kForward) continue;
        for (const model::Row& row : rec.rows) {
          for (model::SeqMask m = row.seqs; m; m &= m - 1) {
            const int s = __builtin_ctzll(m);
            from[s] = from.contains(s) ? std::min(from[s], row.pos) : row.pos;
          }
        }
      }
    }
    std::vector<v1::Op> rollback;
    for (auto [s, pos] : from) {
      v1::Op t;
      t.mutable_truncate()->set_seq(s);
      t.mutable_truncate()->set_from_pos(pos);
      rollback.push_back(std::move(t));
    }
    if (speculation) {
      v1::Op k;
      k.mutable_keep()->set_seq(0);
      rollback.push_back(std::move(k));
    }
    for (v1::Op& op : rollback) {
      auto done = RunOp(std::move(op), {}, {});
      if (!done.ok()) return done.status();
    }
  }
  return absl::OkStatus();
}

namespace {

v1::Op ForwardOp(std::span<const model::Row> rows, const float* hidden,
                 std::span<const int32_t> out_rows, int width, v1::DType wire) {
  v1::Op op;
  v1::Forward* f = op.mutable_forward();
  for (const model::Row& r : rows) {
    v1::RowMeta* m = f->add_rows();
    m->set_pos(r.pos);
    m->set_seqs(r.seqs);
    if (r.attend) m->set_attend(r.attend);
  }
  for (int32_t o : out_rows) f->add_out_rows(o);
  transport::EncodeRows(hidden, static_cast<int64_t>(rows.size()), width, wire,
                        f->mutable_hidden());
  return op;
}

}  // namespace

absl::Status RemoteChain::Forward(std::span<const model::Row> rows, const float* hidden,
                                  std::span<const int32_t> out_rows, float* out) {
  ReapControl();
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<float> input(hidden, hidden + n * options_.hidden_size);
  auto result =
      RunOp(ForwardOp(rows, hidden, out_rows, options_.hidden_size, options_.wire_dtype),
            std::vector<model::Row>(rows.begin(), rows.end()), std::move(input));
  if (!result.ok()) return result.status();
  std::vector<float> values;
  values.reserve(out_rows.size() * options_.hidden_size);
  absl::Status st = transport::DecodeRows(result->hidden(), static_cast<int64_t>(out_rows.size()),
                                          options_.hidden_size, &values);
  if (!st.ok()) return absl::InternalError(StrCat("bad result from the last hop: ", st.message()));
  std::memcpy(out, values.data(), values.size() * sizeof(float));
  return absl::OkStatus();
}

void RemoteChain::ReapControl() {
  // Async control ops are answered in order before any later op; collect their replies.
  for (uint64_t seq : pending_control_) (void)Wait(seq, /*resend=*/false);
  pending_control_.clear();
}

absl::Status RemoteChain::Truncate(model::SeqId seq, int32_t from_pos) {
  v1::Op op;
  op.mutable_truncate()->set_seq(seq);
  op.mutable_truncate()->set_from_pos(from_pos);
  return RunOp(std::move(op), {}, {}).status();
}

absl::Status RemoteChain::Commit(model::SeqId seq, int32_t until_pos) {
  v1::Op op;
  op.mutable_commit()->set_seq(seq);
  op.mutable_commit()->set_until_pos(until_pos);
  return RunOp(std::move(op), {}, {}).status();
}


absl::StatusOr<uint64_t> RemoteChain::SubmitRun(std::span<const model::Row> rows,
                                                const float* hidden,
                                                std::span<const int32_t> out_rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<float> input(hidden, hidden + n * options_.hidden_size);
  const uint64_t seq =
      Submit(ForwardOp(rows, hidden, out_rows, options_.hidden_size, options_.wire_dtype),
             std::vector<model::Row>(rows.begin(), rows.end()), std::move(input));
  std::lock_guard<std::mutex> lock(mu_);
  log_[seq].out_rows = static_cast<int64_t>(out_rows.size());
  return seq;
}

absl::StatusOr<v1::ForwardResult> RemoteChain::AwaitRun(uint64_t run) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (log_.find(run) == log_.end()) return absl::InvalidArgumentError(StrCat("unknown run ", run));
  }
  auto result = Wait(run, /*resend=*/false);
  if (!result.ok()) return result.status();
  // Control ops sent before this run were answered before it: collecting them does not wait.
  std::erase_if(pending_control_, [&](uint64_t seq) {
    if (seq > run) return false;
    (void)Wait(seq, /*resend=*/false);
    return true;
  });
  return result;
}

absl::Status RemoteChain::WaitRun(uint64_t run, float* out) {
  int64_t out_rows = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = log_.find(run);
    if (it != log_.end()) out_rows = it->second.out_rows;
  }
  ASSIGN_OR_RETURN(v1::ForwardResult result, AwaitRun(run));
  std::vector<float> values;
  RETURN_IF_ERROR(transport::DecodeRows(result.hidden(), out_rows, options_.hidden_size, &values));
  std::memcpy(out, values.data(), values.size() * sizeof(float));
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RemoteChain::SubmitVerifiedRun(std::span<const model::Row> rows,
                                                        const float* hidden,
                                                        std::span<const int32_t> out_rows,
                                                        const model::VerifySpec& verify) {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<float> input(hidden, hidden + n * options_.hidden_size);
  v1::Op op = ForwardOp(rows, hidden, out_rows, options_.hidden_size, options_.wire_dtype);
  v1::Verify* v = op.mutable_forward()->mutable_verify();
  v->set_temperature(verify.sampling.temperature);
  v->set_top_k(verify.sampling.top_k);
  v->set_top_p(verify.sampling.top_p);
  v->set_min_p(verify.sampling.min_p);
  v->set_repeat_penalty(verify.sampling.repeat_penalty);
  v->set_repeat_last_n(verify.sampling.repeat_last_n);
  v->set_seed(verify.sampling.seed);
  v->set_rejection_sampling(verify.rejection_sampling);
  *v->mutable_history() = {verify.history.begin(), verify.history.end()};
  *v->mutable_drafts() = {verify.drafts.begin(), verify.drafts.end()};
  return Submit(std::move(op), std::vector<model::Row>(rows.begin(), rows.end()),
                std::move(input));
}

absl::Status RemoteChain::WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) {
  ASSIGN_OR_RETURN(v1::ForwardResult result, AwaitRun(run));
  if (result.tokens().empty()) {
    return absl::InternalError("the last hop answered a verified run without tokens");
  }
  tokens->assign(result.tokens().begin(), result.tokens().end());
  return absl::OkStatus();
}

bool RemoteChain::RunReady(uint64_t run) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return true;
  auto it = log_.find(run);
  return it == log_.end() || it->second.completed || it->second.abandoned || it->second.reply.done;
}

void RemoteChain::TruncateAsync(model::SeqId seq, int32_t from_pos) {
  v1::Op op;
  op.mutable_truncate()->set_seq(seq);
  op.mutable_truncate()->set_from_pos(from_pos);
  pending_control_.push_back(Submit(std::move(op), {}, {}));
}

void RemoteChain::CommitAsync(model::SeqId seq, int32_t until_pos) {
  v1::Op op;
  op.mutable_commit()->set_seq(seq);
  op.mutable_commit()->set_until_pos(until_pos);
  pending_control_.push_back(Submit(std::move(op), {}, {}));
}

std::vector<HopInfo> RemoteChain::Hops() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<HopInfo> out;
  for (const auto& h : hops_) {
    out.push_back({h->hop.node_id(), h->hop.address(), h->hop.first_layer(), h->hop.last_layer()});
  }
  return out;
}

ChainStats RemoteChain::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace strata::client
