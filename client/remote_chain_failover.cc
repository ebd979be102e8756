// RemoteChain: replacing failed hops, and the history it replays into the new ones.
#include <algorithm>
#include <random>

#include "absl/time/clock.h"
#include "client/remote_chain.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::client {

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
    for (size_t i = 0; i < rows.size(); ++i)
      cells.push_back({rows[i].pos, rows[i].seqs, h + i * width});
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
  std::stable_sort(
      cells.begin(), cells.end(), [](const Cell& a, const Cell& b) { return a.pos < b.pos; });
  return cells;
}

absl::Status RemoteChain::Failover(Failure failure, const std::vector<uint64_t>& abandoned) {
  const Rebuild rebuild = DropFailedHops(failure);
  // Numbering: the new hops start at R. With a replay, R is the replay (sent by us to the first
  // new hop); with kept hops, R is also the Redirect on the kept hops, which the new hops never
  // see. Either way the next op after recovery is R + 1 — except with neither, where it is R.
  const uint64_t R = next_op_;
  const bool replay = !rebuild.cells.empty();
  const bool kept = rebuild.keep > 0;
  RETURN_IF_ERROR(OpenReplacement(rebuild, (replay || !kept) ? R : R + 1));
  // Rebuild the new hops' KV: the inputs held for the boundary, in one forward.
  if (replay) {
    if (std::optional<Failure> again = Replay(rebuild, R)) {
      return Failover(*again, abandoned);  // the interrupted ops still need their rollback
    }
  }
  // Re-point the last kept hop at the new ones (ordered through the kept hops).
  if (kept) {
    if (std::optional<Failure> again = Redirect(rebuild.keep, R)) {
      next_op_ = R + 1;
      return Failover(*again, abandoned);  // the interrupted ops still need their rollback
    }
  }
  next_op_ = (kept || replay) ? R + 1 : R;
  if (kept) {
    // The interrupted control ops go again, then the kept hops drop whatever the interrupted
    // ops added (the new hops never had it), and any speculation: the new hops hold the
    // committed text only.
    RETURN_IF_ERROR(ReissueControl(abandoned));
    RETURN_IF_ERROR(RollBack(abandoned));
  }
  return absl::OkStatus();
}

RemoteChain::Rebuild RemoteChain::DropFailedHops(const Failure& failure) {
  Rebuild rebuild;
  std::vector<std::unique_ptr<Hop>> dropped;
  {
    absl::MutexLock lock(&mu_);
    const Hop& failed = *hops_[failure.hop];
    rebuild.failed_id = failed.hop.node_id();
    STRATA_LOG(Warning) << "hop " << failed.hop.node_id() << " (layers " << failed.hop.first_layer()
                        << "-" << failed.hop.last_layer() - 1 << ") failed: " << failure.status;
    BanLocked(failed.hop.node_id());
    if (failure.report && options_.report_failure) {
      mu_.Unlock();  // the callback runs outside the lock
      options_.report_failure(failed.hop.node_id(), failure.status);
      mu_.Lock();
    }
    // Rebuild from the failed hop's first layer if we hold its inputs there, else from an
    // earlier boundary. Copies of the last ops may still be on their way: wait a moment.
    int& keep = rebuild.keep;
    keep = failure.hop;
    while (true) {
      rebuild.boundary = keep == 0 ? 0 : hops_[keep]->hop.first_layer();
      std::optional<std::vector<Cell>> history;
      WaitUntil(absl::Now() + absl::Seconds(1), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        history = History(rebuild.boundary);
        return history.has_value() || (keep > 0 && HeardFrom(*hops_[keep - 1]).ended);
      });
      if (history) {
        rebuild.cells = std::move(*history);
        break;
      }
      --keep;
    }
    for (size_t i = keep; i < hops_.size(); ++i) dropped.push_back(std::move(hops_[i]));
    hops_.resize(keep);
    if (keep > 0) {
      // The last kept hop's old link is gone with the dropped hops; reports about it are old
      // news from now on (its next link will count from the Redirect, op next_op_).
      HeardFrom(*hops_[keep - 1]).next_lost = false;
      HeardFrom(*hops_[keep - 1]).link_since = next_op_;
    }
    stats_.failovers++;
  }
  for (auto& h : dropped) h->stream->Close(absl::Milliseconds(100));
  return rebuild;
}

absl::Status RemoteChain::OpenReplacement(const Rebuild& rebuild, uint64_t first_seq) {
  const absl::Time give_up = absl::Now() + options_.no_route_wait;
  absl::Duration backoff = absl::Milliseconds(100);
  std::mt19937 jitter(static_cast<uint32_t>(absl::ToUnixNanos(absl::Now())));
  absl::Status last;
  std::vector<std::unique_ptr<Hop>> fresh;
  while (fresh.empty()) {
    std::vector<std::string> exclude;
    auto routes = ReplacementRoutes(rebuild.boundary, rebuild.failed_id, &exclude);
    last = routes.status();
    if (routes.ok()) {
      std::vector<const v1::Route*> candidates = {&routes->route()};
      for (const v1::Route& r : routes->alternates()) candidates.push_back(&r);
      for (const v1::Route* route : candidates) {
        bool usable = true;  // skip routes through nodes that failed us meanwhile
        for (const v1::Hop& h : route->hops()) {
          usable =
              usable && std::find(exclude.begin(), exclude.end(), h.node_id()) == exclude.end();
        }
        if (!usable) continue;
        auto hops = OpenHops(*route, rebuild.keep, first_seq, !rebuild.cells.empty());
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
  absl::MutexLock lock(&mu_);
  for (auto& h : fresh) hops_.push_back(std::move(h));
  return absl::OkStatus();
}

absl::StatusOr<v1::RouteResponse> RemoteChain::ReplacementRoutes(
    int boundary, const std::string& failed_id, std::vector<std::string>* exclude) {
  {
    absl::MutexLock lock(&mu_);
    *exclude = ExcludedLocked();
  }
  auto routes = options_.routes(boundary, *exclude);
  if (!routes.ok() && exclude->size() > 1) {
    // Bans are a preference: a node that failed earlier may be back (restarted). Avoid only
    // the node that failed just now, then nothing (opening a dead hop fails fast).
    *exclude = {failed_id};
    routes = options_.routes(boundary, *exclude);
  }
  if (!routes.ok() && !exclude->empty()) {
    exclude->clear();
    routes = options_.routes(boundary, *exclude);
  }
  return routes;
}

std::optional<RemoteChain::Failure> RemoteChain::Replay(const Rebuild& rebuild, uint64_t seq) {
  const std::vector<Cell>& cells = rebuild.cells;
  v1::Op fwd;
  fwd.set_op_seq(seq);
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
  transport::EncodeRows(values.data(),
                        static_cast<int64_t>(cells.size()),
                        options_.hidden_size,
                        options_.wire_dtype,
                        fwd.mutable_forward()->mutable_hidden());
  HopStream* first_new = nullptr;
  {
    absl::MutexLock lock(&mu_);
    snapshot_rows_[seq] = rows;
    for (size_t i = rebuild.keep + 1; i < hops_.size(); ++i) {
      snapshot_seq_[hops_[i]->hop.first_layer()] = seq;
    }
    replay_seq_ = seq;
    replay_first_hop_ = rebuild.keep;
    replay_reply_ = Reply();
    first_new = hops_[rebuild.keep]->stream.get();
  }
  v1::SessionRequest req;
  *req.mutable_op() = fwd;
  const absl::Time t0 = absl::Now();
  first_new->Write(req);
  absl::MutexLock lock(&mu_);
  auto outcome = Await(seq, static_cast<int64_t>(cells.size()), &replay_reply_, rebuild.keep);
  replay_seq_ = 0;
  if (auto* f = std::get_if<Failure>(&outcome)) return *f;
  stats_.last_replay_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  stats_.last_replay_rows = static_cast<int>(cells.size());
  return std::nullopt;
}

std::optional<RemoteChain::Failure> RemoteChain::Redirect(int keep, uint64_t seq) {
  v1::SessionRequest req;
  HopStream* first = nullptr;
  {
    absl::MutexLock lock(&mu_);
    v1::Op& r = *req.mutable_op();
    r.set_op_seq(seq);
    v1::Redirect* rd = r.mutable_redirect();
    rd->set_target_hop(keep - 1);
    rd->set_next_address(hops_[keep]->hop.address());
    rd->set_next_session_id(hops_[keep]->session_id);
    rd->set_next_token(hops_[keep]->token);
    log_[seq].kind = v1::Op::kRedirect;
    first = hops_[0]->stream.get();
  }
  first->Write(req);
  absl::MutexLock lock(&mu_);
  auto outcome = Await(seq, 1, &log_[seq].reply);
  if (auto* f = std::get_if<Failure>(&outcome)) return *f;
  log_[seq].completed = true;
  return std::nullopt;
}

absl::Status RemoteChain::ReissueControl(const std::vector<uint64_t>& abandoned) {
  // Interrupted truncates, keeps and commits are part of the rebuilt history; the kept hops may
  // not have applied them, so they go again, in order and before RollBack (a keep of
  // sequence 0 would otherwise drop cells a commit had still to move there). Each is idempotent.
  std::vector<v1::Op> control;
  {
    absl::MutexLock lock(&mu_);
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
  return absl::OkStatus();
}

absl::Status RemoteChain::RollBack(const std::vector<uint64_t>& abandoned) {
  std::map<int, int32_t> from;  // sequence -> first position the ops added
  bool speculation = false;
  {
    absl::MutexLock lock(&mu_);
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
  return absl::OkStatus();
}

}  // namespace strata::client
