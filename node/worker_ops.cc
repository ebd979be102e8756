// Applying each session's ready ops on the worker thread: control ops, redirects, and the
// batched forward passes over all sessions that are ready, with their results sent on.
#include <algorithm>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "node/worker.h"
#include "transport/tensor_codec.h"

namespace strata::node {

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
      absl::MutexLock lock(&mu_);
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
    return FailOp(s,
                  op.op_seq(),
                  absl::InvalidArgumentError(StrCat(
                      "redirect for hop ", r.target_hop(), " reached hop ", s.open.hop_index())),
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
    s.downstream = downstream_factory_(address, [this, id, generation](absl::Status status) {
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
  absl::MutexLock lock(&peers_mu_);
  peers_[s.next_address] = options_.clock->Now();
}

void Worker::RunForwards(std::vector<std::pair<std::string, Session*>>& batch) {
  // Sessions over the same layer range form one pass: put them next to each other.
  std::stable_sort(batch.begin(), batch.end(), [](const auto& a, const auto& b) {
    return a.second->span.get() < b.second->span.get();
  });
  std::vector<float> hidden;
  std::vector<ForwardItem> items = TakeForwards(batch, &hidden);
  // Sessions over the same layer range run as one pass; their rows are contiguous in `hidden`.
  size_t begin = 0;
  while (begin < items.size()) {
    size_t end = begin + 1;
    while (end < items.size() && items[end].s->span == items[begin].s->span) ++end;
    RunGroup(std::span<ForwardItem>(items.data() + begin, end - begin), hidden);
    begin = end;
  }
}

std::vector<Worker::ForwardItem> Worker::TakeForwards(
    std::vector<std::pair<std::string, Session*>>& batch, std::vector<float>* hidden) {
  const int width = model_->hparams().n_embd;
  // Decode and validate every op first; invalid ones fail alone.
  std::vector<ForwardItem> items;
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
        st = absl::InvalidArgumentError(StrCat("row ",
                                               i,
                                               ": position ",
                                               r.pos(),
                                               " outside [0, ",
                                               s->open.max_length(),
                                               ") or an empty sequence set"));
      }
      rows[i] = {r.pos(), r.seqs(), r.attend()};
    }
    for (int32_t o : f.out_rows()) {
      if (st.ok() && (o < 0 || o >= n)) st = absl::InvalidArgumentError("out_rows out of range");
    }
    const size_t offset = hidden->size();
    if (st.ok()) st = transport::DecodeRows(f.hidden(), n, width, hidden);
    if (!st.ok()) {
      hidden->resize(offset);
      FailOp(*s, op.op_seq(), st, /*poison=*/true);
      continue;
    }
    items.push_back({id, s, std::move(op), std::move(rows), offset, std::move(cancel)});
  }
  return items;
}

void Worker::RunGroup(std::span<ForwardItem> group, std::vector<float>& hidden) {
  auto run = [&](std::span<ForwardItem> part) {
    std::vector<model::LayerSpan::Part> parts;
    for (ForwardItem& it : part) {
      parts.push_back({it.s->kv.get(), it.rows, it.cancel.get(), &it.cancelled});
    }
    // Every part of one pass must use the same span (the caller groups by span).
    return part.front().s->span->ForwardBatch(parts, hidden.data() + part.front().offset);
  };
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
        DeliverForward(group[i].id,
                       *group[i].s,
                       group[i].op,
                       hidden.data() + group[i].offset,
                       group[i].rows.size(),
                       absl::ToDoubleMilliseconds(absl::Now() - t1));
      } else {
        FailOp(*group[i].s, group[i].op.op_seq(), one, /*poison=*/true);
      }
    }
    return;
  }
  if (!st.ok()) {
    if (group[0].cancelled) {
      DeliverCancelled(group[0].id, *group[0].s, group[0].op);
    } else {
      FailOp(*group[0].s, group[0].op.op_seq(), st, /*poison=*/true);
    }
    return;
  }
  int64_t rows = 0;
  for (ForwardItem& it : group) {
    if (it.cancelled) {
      DeliverCancelled(it.id, *it.s, it.op);
      continue;
    }
    DeliverForward(it.id, *it.s, it.op, hidden.data() + it.offset, it.rows.size(), ms);
    rows += static_cast<int64_t>(it.rows.size());
  }
  stats_.total_rows.fetch_add(rows, std::memory_order_relaxed);
  stats_.total_batches.fetch_add(1, std::memory_order_relaxed);
  stats_.batched_sessions.fetch_add(static_cast<int64_t>(group.size()), std::memory_order_relaxed);
  stats_.last_batch_ms.store(ms, std::memory_order_relaxed);
  if (options_.on_batch) options_.on_batch(absl::Milliseconds(ms));
}

void Worker::DeliverForward(const std::string& id,
                            Session& s,
                            const v1::Op& op,
                            const float* hidden,
                            int64_t rows,
                            double compute_ms) {
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
      for (int32_t o : f.out_rows())
        picked.insert(picked.end(), hidden + o * width, hidden + (o + 1) * width);
      transport::EncodeRows(
          picked.data(), f.out_rows_size(), width, s.open.wire_dtype(), result->mutable_hidden());
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

absl::StatusOr<std::vector<int32_t>> Worker::Verify(const v1::Forward& f,
                                                    const float* hidden,
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

}  // namespace strata::node
