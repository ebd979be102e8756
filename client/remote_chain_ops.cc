// RemoteChain: sending ops to the first hop and waiting for their answers.
#include <algorithm>
#include <cstring>

#include "absl/time/clock.h"
#include "client/remote_chain.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/tensor_codec.h"

namespace strata::client {
namespace {

v1::Op ForwardOp(std::span<const model::Row> rows,
                 const float* hidden,
                 std::span<const int32_t> out_rows,
                 int width,
                 v1::DType wire) {
  v1::Op op;
  v1::Forward* f = op.mutable_forward();
  for (const model::Row& r : rows) {
    v1::RowMeta* m = f->add_rows();
    m->set_pos(r.pos);
    m->set_seqs(r.seqs);
    if (r.attend) m->set_attend(r.attend);
  }
  for (int32_t o : out_rows) f->add_out_rows(o);
  transport::EncodeRows(
      hidden, static_cast<int64_t>(rows.size()), width, wire, f->mutable_hidden());
  return op;
}

}  // namespace

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

std::variant<v1::ForwardResult, RemoteChain::Failure> RemoteChain::Await(uint64_t seq,
                                                                         int64_t rows,
                                                                         Reply* reply,
                                                                         size_t first_hop) {
  Failure failure;
  const absl::Duration deadline = StepDeadline(rows);
  const absl::Time until = absl::Now() + deadline;
  bool answered = false;
  while (true) {
    // Hops that have not answered their open yet must do so within the open timeout.
    absl::Time wake = until;
    for (const auto& h : hops_) {
      const Heard& heard = HeardFrom(*h);
      if (!heard.opened && !heard.ended) wake = std::min(wake, heard.open_deadline);
    }
    answered = WaitUntil(
        wake, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return Settled(*reply, &failure); });
    if (answered || absl::Now() >= until) break;
    if (std::optional<Failure> overdue = OpenOverdue()) return *overdue;
  }
  if (!answered) return Stuck(seq, first_hop, deadline);
  const Reply& r = *reply;
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

bool RemoteChain::Settled(const Reply& reply, Failure* failure) const {
  if (reply.done) return true;
  for (size_t i = 0; i < hops_.size(); ++i) {
    const Heard& heard = HeardFrom(*hops_[i]);
    if (heard.ended) {
      // A hop that ended before it opened refused the session (or could not be reached): the
      // route avoids it, but it is not reported as failed.
      *failure = {static_cast<int>(i), heard.end_status, heard.opened};
      return true;
    }
    if (heard.next_lost && i + 1 < hops_.size()) {
      *failure = {
          static_cast<int>(i + 1),
          absl::UnavailableError(StrCat(
              hops_[i + 1]->hop.node_id(), " is unreachable from ", hops_[i]->hop.node_id())),
          true};
      return true;
    }
  }
  return false;
}

std::optional<RemoteChain::Failure> RemoteChain::OpenOverdue() const {
  for (size_t i = 0; i < hops_.size(); ++i) {
    const Hop& h = *hops_[i];
    const Heard& heard = HeardFrom(h);
    if (!heard.opened && !heard.ended && absl::Now() >= heard.open_deadline) {
      return Failure{
          static_cast<int>(i),
          absl::DeadlineExceededError(
              StrCat("hop ", h.hop.node_id(), " (", h.hop.address(), ") did not answer the open")),
          false};
    }
  }
  return std::nullopt;
}

RemoteChain::Failure RemoteChain::Stuck(uint64_t seq,
                                        size_t first_hop,
                                        absl::Duration deadline) const {
  size_t stuck = hops_.size() - 1;
  for (size_t i = first_hop; i + 1 < hops_.size(); ++i) {
    if (!HeardFrom(*hops_[i]).copies.contains(seq)) {
      stuck = i;
      break;
    }
  }
  return Failure{
      static_cast<int>(stuck),
      absl::DeadlineExceededError(StrCat(
          hops_[stuck]->hop.node_id(), " did not answer within ", absl::FormatDuration(deadline))),
      true};
}

uint64_t RemoteChain::Submit(v1::Op op, std::vector<model::Row> rows, std::vector<float> hidden) {
  // A hop that announced it is leaving is replaced before it is sent more work.
  std::optional<Failure> leaving;
  bool quiet = true;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = log_.rbegin(); it != log_.rend() && quiet; ++it) {
      quiet = it->second.completed || it->second.abandoned || it->second.kind == v1::Op::kRedirect;
    }
    for (size_t i = 0; quiet && i < hops_.size(); ++i) {
      if (HeardFrom(*hops_[i]).draining) {
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
  HopStream* first = nullptr;
  {
    absl::MutexLock lock(&mu_);
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
    first = hops_[0]->stream.get();
  }
  v1::SessionRequest req;
  *req.mutable_op() = std::move(op);
  first->Write(req);
  return seq;
}

absl::StatusOr<v1::ForwardResult> RemoteChain::Wait(uint64_t seq, bool resend) {
  int failovers = 0;
  absl::Time failure_time;
  bool recovering = false;
  while (true) {
    Interrupted interrupted;
    {
      absl::MutexLock lock(&mu_);
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
      auto outcome = Await(seq, rec->second.n_rows * (1 + in_flight), &rec->second.reply);
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
      const Failure& failure = std::get<Failure>(outcome);
      if (!Retryable(failure.status)) {
        rec->second.completed = true;  // answered (with an error): not in flight any more
        return failure.status;
      }
      interrupted = Interrupt(seq, failure);
    }
    const Failure& failure = interrupted.failure;
    if (++failovers > options_.max_failovers_per_op) {
      return absl::Status(failure.status.code(),
                          StrCat("giving up after ",
                                 options_.max_failovers_per_op,
                                 " failovers: ",
                                 failure.status.message()));
    }
    if (!recovering) failure_time = absl::Now();
    recovering = true;
    RETURN_IF_ERROR(interrupted.refused ? Reopen(failure)
                                        : Failover(failure, interrupted.abandoned));
    if (!resend) return absl::AbortedError("the route changed while this run was in flight");
    seq = Submit(
        std::move(interrupted.op), std::move(interrupted.rows), std::move(interrupted.hidden));
  }
}

RemoteChain::Interrupted RemoteChain::Interrupt(uint64_t seq, const Failure& failure) {
  Interrupted interrupted;
  interrupted.failure = failure;
  // Before any op was answered, a hop that never opened refused the session or did not answer
  // its open: the session opens again elsewhere, now waiting for the opens, as a fresh one
  // would (fails fast with the refusal where no route has room; nothing is reported).
  interrupted.refused = !answered_any_ && !HeardFrom(*hops_[failure.hop]).opened;
  // Every op still in flight is abandoned by the failover.
  for (auto& [s, r] : log_) {
    if (!r.completed && !r.reply.done && !r.abandoned && r.kind != v1::Op::kRedirect) {
      r.abandoned = true;
      interrupted.abandoned.push_back(s);
    }
  }
  const OpRecord& rec = log_.at(seq);
  interrupted.op = rec.op;
  interrupted.rows = rec.rows;
  interrupted.hidden = inputs_[0].contains(seq) ? inputs_[0][seq] : std::vector<float>();
  return interrupted;
}

absl::StatusOr<v1::ForwardResult> RemoteChain::RunOp(v1::Op op,
                                                     std::vector<model::Row> rows,
                                                     std::vector<float> hidden) {
  return Wait(Submit(std::move(op), std::move(rows), std::move(hidden)), /*resend=*/true);
}

void RemoteChain::Cancel(std::span<const uint64_t> seqs) {
  v1::SessionRequest req;
  for (uint64_t s : seqs) req.mutable_cancel()->add_op_seqs(s);
  absl::MutexLock lock(&mu_);
  for (auto& h : hops_) h->stream->Write(req);
}

absl::Status RemoteChain::Forward(std::span<const model::Row> rows,
                                  const float* hidden,
                                  std::span<const int32_t> out_rows,
                                  float* out) {
  ReapControl();
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<float> input(hidden, hidden + n * options_.hidden_size);
  auto result = RunOp(ForwardOp(rows, hidden, out_rows, options_.hidden_size, options_.wire_dtype),
                      std::vector<model::Row>(rows.begin(), rows.end()),
                      std::move(input));
  if (!result.ok()) return result.status();
  std::vector<float> values;
  values.reserve(out_rows.size() * options_.hidden_size);
  absl::Status st = transport::DecodeRows(
      result->hidden(), static_cast<int64_t>(out_rows.size()), options_.hidden_size, &values);
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
             std::vector<model::Row>(rows.begin(), rows.end()),
             std::move(input));
  absl::MutexLock lock(&mu_);
  log_[seq].out_rows = static_cast<int64_t>(out_rows.size());
  return seq;
}

absl::StatusOr<v1::ForwardResult> RemoteChain::AwaitRun(uint64_t run) {
  {
    absl::MutexLock lock(&mu_);
    if (log_.find(run) == log_.end())
      return absl::InvalidArgumentError(StrCat("unknown run ", run));
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
    absl::MutexLock lock(&mu_);
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
  return Submit(std::move(op), std::vector<model::Row>(rows.begin(), rows.end()), std::move(input));
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
  absl::MutexLock lock(&mu_);
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

}  // namespace strata::client
