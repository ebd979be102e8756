#include "client/local_chain.h"

#include <cstring>

#include "common/status.h"
#include "common/strings.h"

namespace strata::client {

absl::StatusOr<std::unique_ptr<LocalChain>> LocalChain::Create(
    std::shared_ptr<const model::Model> model,
    ThreadPool* pool,
    size_t kv_bytes,
    std::vector<int> boundaries,
    bool allow_partial) {
  const int n_layer = model->hparams().n_layer;
  if (boundaries.empty()) boundaries = {0, n_layer};
  if (boundaries.size() < 2 || boundaries.front() != 0 ||
      (boundaries.back() != n_layer && !(allow_partial && boundaries.back() < n_layer))) {
    return absl::InvalidArgumentError(StrCat("span boundaries must run from 0 to ", n_layer));
  }
  auto chain = std::unique_ptr<LocalChain>(new LocalChain());
  chain->model_ = model;
  chain->pool_ = pool;
  chain->n_embd_ = model->hparams().n_embd;
  for (size_t i = 0; i + 1 < boundaries.size(); ++i) {
    Stage stage;
    ASSIGN_OR_RETURN(stage.span, model::LayerSpan::Load(model, boundaries[i], boundaries[i + 1]));
    stage.pool = std::make_unique<model::KvPool>(kv_bytes);
    stage.cache = std::make_unique<model::KvCache>(stage.pool.get(), stage.span->kv_layout());
    chain->stages_.push_back(std::move(stage));
  }
  return chain;
}

absl::Status LocalChain::Forward(std::span<const model::Row> rows,
                                 const float* hidden,
                                 std::span<const int32_t> out_rows,
                                 float* out) {
  const size_t width = static_cast<size_t>(n_embd_);
  work_.assign(hidden, hidden + rows.size() * width);
  for (size_t i = 0; i < stages_.size(); ++i) {
    absl::Status st =
        stages_[i].span->Forward(rows, work_.data(), *stages_[i].cache, *pool_, scratch_);
    if (!st.ok()) {
      // Keep every stage consistent: undo the cells earlier stages added for these rows.
      for (size_t j = 0; j < i; ++j) {
        for (const model::Row& r : rows) {
          for (model::SeqMask m = r.seqs; m; m &= m - 1) {
            stages_[j].cache->Truncate(__builtin_ctzll(m), r.pos);
          }
        }
      }
      return st;
    }
  }
  for (size_t i = 0; i < out_rows.size(); ++i) {
    if (out_rows[i] < 0 || out_rows[i] >= static_cast<int32_t>(rows.size())) {
      return absl::InvalidArgumentError(StrCat("output row ", out_rows[i], " out of range"));
    }
    std::memcpy(out + i * width, work_.data() + out_rows[i] * width, width * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status LocalChain::Truncate(model::SeqId seq, int32_t from_pos) {
  if (seq < 0 || seq >= model::kMaxSeqs) {
    return absl::InvalidArgumentError(StrCat("sequence id ", seq, " out of range"));
  }
  for (Stage& s : stages_) s.cache->Truncate(seq, from_pos);
  return absl::OkStatus();
}

absl::Status LocalChain::Commit(model::SeqId seq, int32_t until_pos) {
  if (seq < 0 || seq >= model::kMaxSeqs) {
    return absl::InvalidArgumentError(StrCat("sequence id ", seq, " out of range"));
  }
  for (Stage& s : stages_) s.cache->Commit(seq, until_pos);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> LocalChain::SubmitRun(std::span<const model::Row> rows,
                                               const float* hidden,
                                               std::span<const int32_t> out_rows) {
  Finished f;
  f.hidden.resize(out_rows.size() * static_cast<size_t>(n_embd_));
  f.status = Forward(rows, hidden, out_rows, f.hidden.data());
  const uint64_t id = next_run_++;
  runs_[id] = std::move(f);
  return id;
}

absl::Status LocalChain::WaitRun(uint64_t run, float* out) {
  auto it = runs_.find(run);
  if (it == runs_.end()) return absl::InvalidArgumentError(StrCat("unknown run ", run));
  absl::Status st = it->second.status;
  if (st.ok()) {
    std::memcpy(out, it->second.hidden.data(), it->second.hidden.size() * sizeof(float));
  }
  runs_.erase(it);
  return st;
}

absl::StatusOr<uint64_t> LocalChain::SubmitVerifiedRun(std::span<const model::Row> rows,
                                                       const float* hidden,
                                                       std::span<const int32_t> out_rows,
                                                       const model::VerifySpec& verify) {
  ASSIGN_OR_RETURN(uint64_t id, SubmitRun(rows, hidden, out_rows));
  Finished& f = runs_[id];
  if (!f.status.ok()) return id;
  std::vector<int32_t> positions;
  for (int32_t o : out_rows) positions.push_back(rows[o].pos);
  absl::StatusOr<int64_t> first = model::FirstDecidedPosition(positions);
  if (!first.ok()) {
    f.status = first.status();
    return id;
  }
  if (!verifier_ && stages_.back().span->last() == model_->hparams().n_layer) {
    auto v = model::Verifier::Load(model_, pool_);
    if (!v.ok()) {
      f.status = v.status();
      return id;
    }
    verifier_ = std::move(*v);
  }
  if (!verifier_) {
    f.status = absl::FailedPreconditionError(
        "a chain that stops before the last layer cannot "
        "verify");
    return id;
  }
  model::VerifySpec spec = verify;
  spec.first_position = *first;
  auto tokens = verifier_->Verify(f.hidden.data(), static_cast<int64_t>(out_rows.size()), spec);
  if (tokens.ok()) {
    f.tokens = std::move(*tokens);
    f.verified = true;
  } else {
    f.status = tokens.status();
  }
  return id;
}

absl::Status LocalChain::WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) {
  auto it = runs_.find(run);
  if (it == runs_.end()) return absl::InvalidArgumentError(StrCat("unknown run ", run));
  absl::Status st = it->second.status;
  if (st.ok() && !it->second.verified) {
    st = absl::FailedPreconditionError(StrCat("run ", run, " was not sent for verification"));
  }
  if (st.ok()) *tokens = std::move(it->second.tokens);
  runs_.erase(it);
  return st;
}

std::vector<HopInfo> LocalChain::Hops() const {
  std::vector<HopInfo> hops;
  for (const Stage& s : stages_) {
    hops.push_back({"local", "in-process", s.span->first(), s.span->last()});
  }
  return hops;
}

}  // namespace strata::client
