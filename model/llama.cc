#include "model/llama.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>

#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "kernels/attention.h"

namespace strata::model {
namespace {

using kernels::Buffer;
using kernels::DType;
using kernels::Tensor;

float* Floats(Buffer& b, int64_t count) {
  b.Resize(static_cast<size_t>(count) * sizeof(float));
  return b.as<float>();
}

void AddBias(float* y, const Tensor& bias, int64_t m, int64_t n) {
  const float* b = bias.as<const float>();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) y[i * n + j] += b[j];
  }
}

void AddInPlace(float* dst, const float* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
}

bool IsMatMulType(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
    case DType::kQ4_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Model>> Model::Open(const std::string& path) {
  std::shared_ptr<Model> model(new Model());
  model->path_ = path;
  ASSIGN_OR_RETURN(model->file_, gguf::GgufFile::Open(path));
  ASSIGN_OR_RETURN(model->hparams_, HParams::FromGguf(*model->file_));
  // FNV-1a over the size and the header bytes.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint8_t b) { h = (h ^ b) * 1099511628211ull; };
  const uint64_t size = model->file_->size();
  for (int i = 0; i < 8; ++i) mix(static_cast<uint8_t>(size >> (8 * i)));
  const uint8_t* base = model->file_->base();
  for (size_t i = 0; i < model->file_->data_offset(); ++i) mix(base[i]);
  std::string name;
  for (char c : model->hparams_.model_name.empty() ? model->hparams_.arch_name
                                                   : model->hparams_.model_name) {
    name += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '-';
  }
  model->id_ = absl::StrFormat("%s-%016x", name, h);
  return std::shared_ptr<const Model>(std::move(model));
}

absl::StatusOr<Tensor> Model::Weight(const std::string& name,
                                     std::initializer_list<int64_t> shape) const {
  ASSIGN_OR_RETURN(const gguf::GgufTensorInfo* info, file_->FindTensor(name));
  Tensor t = gguf::GgufFile::View(*info);
  bool same = t.ndim == static_cast<int>(shape.size());
  int i = 0;
  for (int64_t d : shape) same = same && t.shape[i++] == d;
  if (!same) {
    std::string want = "{";
    for (int64_t d : shape) want += StrCat(want.size() > 1 ? ", " : "", d);
    return absl::InvalidArgumentError(StrCat(
        path_, ": tensor '", name, "' has shape ", t.ShapeString(), ", expected ", want, "}"));
  }
  if (shape.size() == 1 && t.dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        StrCat(path_, ": tensor '", name, "' must be f32, is ", kernels::Info(t.dtype).name));
  }
  if (!IsMatMulType(t.dtype)) {
    return absl::InvalidArgumentError(StrCat(path_,
                                             ": tensor '",
                                             name,
                                             "' has type ",
                                             kernels::Info(t.dtype).name,
                                             ", which cannot be used as a weight"));
  }
  file_->Prefetch(*info);
  return t;
}

absl::StatusOr<std::unique_ptr<Embedder>> Embedder::Load(std::shared_ptr<const Model> model) {
  auto e = std::make_unique<Embedder>();
  const HParams& hp = model->hparams();
  ASSIGN_OR_RETURN(e->table_, model->Weight("token_embd.weight", {hp.n_vocab, hp.n_embd}));
  e->model_ = std::move(model);
  return e;
}

absl::Status Embedder::Embed(std::span<const int32_t> tokens, float* out) const {
  const int n_vocab = model_->hparams().n_vocab;
  for (int32_t t : tokens) {
    if (t < 0 || t >= n_vocab) {
      return absl::InvalidArgumentError(
          StrCat("token id ", t, " is outside the vocabulary [0, ", n_vocab, ")"));
    }
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    kernels::GetRow(table_, tokens[i], out + i * n_embd());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LayerSpan>> LayerSpan::Load(std::shared_ptr<const Model> model,
                                                           int first,
                                                           int last) {
  const HParams& hp = model->hparams();
  if (first < 0 || last > hp.n_layer || first >= last) {
    return absl::InvalidArgumentError(StrCat(
        "layer span [", first, ", ", last, ") is not inside the model's [0, ", hp.n_layer, ")"));
  }
  auto span = std::unique_ptr<LayerSpan>(new LayerSpan());
  span->first_ = first;
  span->last_ = last;
  const int64_t e = hp.n_embd, q = hp.q_dim(), kv = hp.kv_dim(), ff = hp.n_ff;
  for (int l = first; l < last; ++l) {
    const std::string p = StrCat("blk.", l, ".");
    Layer L;
    ASSIGN_OR_RETURN(L.attn_norm, model->Weight(p + "attn_norm.weight", {e}));
    ASSIGN_OR_RETURN(L.wq, model->Weight(p + "attn_q.weight", {q, e}));
    ASSIGN_OR_RETURN(L.wk, model->Weight(p + "attn_k.weight", {kv, e}));
    ASSIGN_OR_RETURN(L.wv, model->Weight(p + "attn_v.weight", {kv, e}));
    ASSIGN_OR_RETURN(L.wo, model->Weight(p + "attn_output.weight", {e, q}));
    ASSIGN_OR_RETURN(L.ffn_norm, model->Weight(p + "ffn_norm.weight", {e}));
    ASSIGN_OR_RETURN(L.w_gate, model->Weight(p + "ffn_gate.weight", {ff, e}));
    ASSIGN_OR_RETURN(L.w_up, model->Weight(p + "ffn_up.weight", {ff, e}));
    ASSIGN_OR_RETURN(L.w_down, model->Weight(p + "ffn_down.weight", {e, ff}));
    if (hp.qkv_bias) {
      ASSIGN_OR_RETURN(L.bq, model->Weight(p + "attn_q.bias", {q}));
      ASSIGN_OR_RETURN(L.bk, model->Weight(p + "attn_k.bias", {kv}));
      ASSIGN_OR_RETURN(L.bv, model->Weight(p + "attn_v.bias", {kv}));
    }
    span->layers_.push_back(L);
  }
  span->model_ = std::move(model);
  return span;
}

std::vector<kernels::Tensor> LayerSpan::tensors() const {
  std::vector<kernels::Tensor> out;
  for (const Layer& L : layers_) {
    for (const Tensor& t : {L.attn_norm,
                            L.wq,
                            L.wk,
                            L.wv,
                            L.wo,
                            L.ffn_norm,
                            L.w_gate,
                            L.w_up,
                            L.w_down,
                            L.bq,
                            L.bk,
                            L.bv}) {
      if (t.data != nullptr) out.push_back(t);
    }
  }
  return out;
}

absl::Status LayerSpan::Forward(std::span<const Row> rows,
                                float* hidden,
                                KvCache& kv,
                                ThreadPool& pool,
                                ForwardScratch& s,
                                const std::atomic<bool>* cancel) const {
  const Part part{&kv, rows};
  return ForwardBatch({&part, 1}, hidden, pool, s, cancel);
}

namespace {

// Appends, for each row, the slots of the cells it attends to in (position, sequence set, slot)
// order: the same for every layer, and independent of where the cache put the cells.
void VisibleCells(const KvCache& kv,
                  std::span<const Row> rows,
                  std::vector<std::vector<int32_t>>::iterator out) {
  const auto& all = kv.cells();
  std::vector<int32_t> order;
  order.reserve(kv.used_cells());
  for (int32_t c = 0; c < static_cast<int32_t>(all.size()); ++c) {
    if (all[c].seqs != 0) order.push_back(c);
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (all[a].pos != all[b].pos) return all[a].pos < all[b].pos;
    if (all[a].seqs != all[b].seqs) return all[a].seqs < all[b].seqs;
    return a < b;
  });
  for (const Row& row : rows) {
    auto& vis = *out++;
    vis.clear();
    const SeqMask sees = row.seqs | row.attend;
    for (int32_t c : order) {
      if (all[c].pos > row.pos) break;
      if (all[c].seqs & sees) vis.push_back(c);
    }
  }
}

}  // namespace

absl::Status LayerSpan::ForwardBatch(std::span<const Part> parts,
                                     float* hidden,
                                     ThreadPool& pool,
                                     ForwardScratch& s,
                                     const std::atomic<bool>* cancel) const {
  int64_t n = 0;
  const KvLayout want = kv_layout();
  for (const Part& p : parts) {
    if (p.kv == nullptr || p.kv->layout().n_layers != want.n_layers ||
        p.kv->layout().kv_dim != want.kv_dim) {
      return absl::FailedPreconditionError("KV cache layout does not match the layer span");
    }
    n += static_cast<int64_t>(p.rows.size());
  }
  if (n == 0) return absl::OkStatus();

  // Add every part's cells; undo the earlier parts if a later one fails.
  s.slots.resize(n);
  s.row_cache.resize(n);
  s.positions.resize(n);
  s.visible.resize(std::max<size_t>(s.visible.size(), n));
  std::vector<std::pair<KvCache*, std::vector<int32_t>>> added;
  std::vector<KvCache::Cell> cells;
  int64_t offset = 0;
  for (const Part& p : parts) {
    cells.resize(p.rows.size());
    for (size_t i = 0; i < p.rows.size(); ++i) cells[i] = {p.rows[i].pos, p.rows[i].seqs};
    auto slots = p.kv->AddCells(cells);
    if (!slots.ok()) {
      for (auto& [kv, sl] : added) kv->FreeSlots(sl);
      return slots.status();
    }
    for (size_t i = 0; i < p.rows.size(); ++i) {
      s.slots[offset + i] = (*slots)[i];
      s.row_cache[offset + i] = p.kv;
      s.positions[offset + i] = p.rows[i].pos;
    }
    added.emplace_back(p.kv, std::move(*slots));
    offset += static_cast<int64_t>(p.rows.size());
  }
  offset = 0;
  for (const Part& p : parts) {
    VisibleCells(*p.kv, p.rows, s.visible.begin() + offset);
    offset += static_cast<int64_t>(p.rows.size());
  }

  const HParams& hp = model_->hparams();
  const int64_t e = hp.n_embd, q_dim = hp.q_dim(), kv_dim = hp.kv_dim(), ff = hp.n_ff;
  float* norm = Floats(s.norm, n * e);
  float* q = Floats(s.q, n * q_dim);
  float* k = Floats(s.k, n * kv_dim);
  float* v = Floats(s.v, n * kv_dim);
  Floats(s.attn, n * q_dim);
  float* attn = s.attn.as<float>();
  float* proj = Floats(s.proj, n * e);
  float* gate = Floats(s.gate, n * ff);
  float* up = Floats(s.up, n * ff);
  float* act = Floats(s.act, n * ff);
  const kernels::RopeParams rope{
      hp.head_dim, hp.rot_dim, hp.rope_base, hp.rope_freq_scale, hp.rope_neox};

  auto is_cancelled = [&](const Part& p) {
    return p.cancel != nullptr && p.cancel->load(std::memory_order_acquire);
  };
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    bool all_cancelled = true;
    for (const Part& p : parts) all_cancelled = all_cancelled && is_cancelled(p);
    if ((cancel != nullptr && cancel->load(std::memory_order_acquire)) || all_cancelled) {
      for (auto& [kv, sl] : added) kv->FreeSlots(sl);
      for (const Part& p : parts) {
        if (p.cancelled) *p.cancelled = true;
      }
      return absl::CancelledError("forward cancelled");
    }
    const Layer& L = layers_[l];
    kernels::RmsNorm(hidden, L.attn_norm.as<const float>(), n, e, hp.rms_eps, norm);
    {
      const kernels::Tensor* ws[3] = {&L.wq, &L.wk, &L.wv};
      float* const ys[3] = {q, k, v};
      kernels::MatMulMany(ws, norm, n, ys, pool, s.matmul);
    }
    if (hp.qkv_bias) {
      AddBias(q, L.bq, n, q_dim);
      AddBias(k, L.bk, n, kv_dim);
      AddBias(v, L.bv, n, kv_dim);
    }
    kernels::Rope(q, s.positions.data(), n, hp.n_head, rope);
    kernels::Rope(k, s.positions.data(), n, hp.n_head_kv, rope);
    for (int64_t i = 0; i < n; ++i) {
      const KvCache& kv = *s.row_cache[i];
      kernels::ConvertToF16(k + i * kv_dim, kv.K(s.slots[i], l), kv_dim);
      kernels::ConvertToF16(v + i * kv_dim, kv.V(s.slots[i], l), kv_dim);
    }
    Attention(n, l, pool, s);
    kernels::MatMul(L.wo, attn, n, proj, pool, s.matmul);
    AddInPlace(hidden, proj, n * e);

    kernels::RmsNorm(hidden, L.ffn_norm.as<const float>(), n, e, hp.rms_eps, norm);
    {
      const kernels::Tensor* ws[2] = {&L.w_gate, &L.w_up};
      float* const ys[2] = {gate, up};
      kernels::MatMulMany(ws, norm, n, ys, pool, s.matmul);
    }
    kernels::SwiGlu(gate, up, n * ff, act);
    kernels::MatMul(L.w_down, act, n, proj, pool, s.matmul);
    AddInPlace(hidden, proj, n * e);
  }
  // Parts given up during the pass keep no cells.
  for (size_t i = 0; i < parts.size(); ++i) {
    if (is_cancelled(parts[i])) {
      added[i].first->FreeSlots(added[i].second);
      if (parts[i].cancelled) *parts[i].cancelled = true;
    }
  }
  return absl::OkStatus();
}

void LayerSpan::Attention(int64_t n, int layer, ThreadPool& pool, ForwardScratch& s) const {
  const HParams& hp = model_->hparams();
  const int heads = hp.n_head, group = hp.n_head / hp.n_head_kv, hd = hp.head_dim;
  const int64_t q_dim = hp.q_dim();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  s.per_thread.resize(std::max<size_t>(s.per_thread.size(), pool.num_threads()));
  const float* q = s.q.as<const float>();
  float* out = s.attn.as<float>();
  const int64_t tasks = n * heads;
  pool.Run([&](int thread, int threads) {
    const int64_t begin = tasks * thread / threads, end = tasks * (thread + 1) / threads;
    auto& t = s.per_thread[thread];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / heads;
      const int h = static_cast<int>(task % heads);
      const size_t kv_off = static_cast<size_t>(h / group) * hd;
      const KvCache& kv = *s.row_cache[i];
      const auto& vis = s.visible[i];
      t.k.resize(vis.size());
      t.v.resize(vis.size());
      t.scores.resize(vis.size());
      for (size_t j = 0; j < vis.size(); ++j) {
        t.k[j] = kv.K(vis[j], layer) + kv_off;
        t.v[j] = kv.V(vis[j], layer) + kv_off;
      }
      kernels::AttendHead(q + i * q_dim + h * hd,
                          t.k.data(),
                          t.v.data(),
                          static_cast<int>(vis.size()),
                          hd,
                          scale,
                          t.scores.data(),
                          out + i * q_dim + h * hd);
    }
  });
}

absl::StatusOr<std::unique_ptr<Head>> Head::Load(std::shared_ptr<const Model> model) {
  auto head = std::make_unique<Head>();
  const HParams& hp = model->hparams();
  ASSIGN_OR_RETURN(head->norm_, model->Weight("output_norm.weight", {hp.n_embd}));
  const char* out_name = hp.tied_output ? "token_embd.weight" : "output.weight";
  ASSIGN_OR_RETURN(head->output_, model->Weight(out_name, {hp.n_vocab, hp.n_embd}));
  head->model_ = std::move(model);
  return head;
}

void Head::Logits(
    const float* hidden, int64_t n, float* logits, ThreadPool& pool, ForwardScratch& s) const {
  const HParams& hp = model_->hparams();
  float* norm = Floats(s.norm, n * hp.n_embd);
  kernels::RmsNorm(hidden, norm_.as<const float>(), n, hp.n_embd, hp.rms_eps, norm);
  kernels::MatMul(output_, norm, n, logits, pool, s.matmul);
}

}  // namespace strata::model
