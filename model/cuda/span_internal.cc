// What the CUDA span backends share (span_internal.h): reading a layer's tensors, adding and
// describing the KV cells of a batch, cancellation, and the layout of a forward's upload.
#include "model/cuda/span_internal.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/strings.h"
#include "kernels/cuda/ops.h"

namespace strata::model::cuda_internal {
namespace {

namespace cu = kernels::cuda;
using kernels::Tensor;

template <typename T>
T* AlignUp(T* p, size_t align) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<T*>((v + align - 1) / align * align);
}
size_t AlignUp(size_t v, size_t align) { return (v + align - 1) / align * align; }

// For each row, its visible slots in (position, sequence set, slot) order (as LayerSpan does),
// appended to `visible`; `ranges` gets one (offset, count) per row.
void AppendVisible(const KvCache& kv,
                   std::span<const Row> rows,
                   std::vector<int32_t>& visible,
                   std::vector<std::pair<int32_t, int32_t>>& ranges) {
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
    const int32_t begin = static_cast<int32_t>(visible.size());
    const SeqMask sees = row.seqs | row.attend;
    for (int32_t c : order) {
      if (all[c].pos > row.pos) break;
      if (all[c].seqs & sees) visible.push_back(c);
    }
    ranges.emplace_back(begin, static_cast<int32_t>(visible.size()) - begin);
  }
}

bool PartCancelled(const LayerSpan::Part& p) {
  return p.cancel != nullptr && p.cancel->load(std::memory_order_acquire);
}

}  // namespace

absl::StatusOr<HostLayer> ReadLayer(const Model& model, int l, bool check_output_projections) {
  const HParams& hp = model.hparams();
  const int64_t e = hp.n_embd, q = hp.q_dim(), kv = hp.kv_dim(), ff = hp.n_ff;
  const std::string p = StrCat("blk.", l, ".");
  HostLayer L;
  ASSIGN_OR_RETURN(L.attn_norm, model.Weight(p + "attn_norm.weight", {e}));
  ASSIGN_OR_RETURN(L.wq, model.Weight(p + "attn_q.weight", {q, e}));
  ASSIGN_OR_RETURN(L.wk, model.Weight(p + "attn_k.weight", {kv, e}));
  ASSIGN_OR_RETURN(L.wv, model.Weight(p + "attn_v.weight", {kv, e}));
  ASSIGN_OR_RETURN(L.wo, model.Weight(p + "attn_output.weight", {e, q}));
  ASSIGN_OR_RETURN(L.ffn_norm, model.Weight(p + "ffn_norm.weight", {e}));
  ASSIGN_OR_RETURN(L.w_gate, model.Weight(p + "ffn_gate.weight", {ff, e}));
  ASSIGN_OR_RETURN(L.w_up, model.Weight(p + "ffn_up.weight", {ff, e}));
  ASSIGN_OR_RETURN(L.w_down, model.Weight(p + "ffn_down.weight", {e, ff}));
  if (hp.qkv_bias) {
    ASSIGN_OR_RETURN(L.bq, model.Weight(p + "attn_q.bias", {q}));
    ASSIGN_OR_RETURN(L.bk, model.Weight(p + "attn_k.bias", {kv}));
    ASSIGN_OR_RETURN(L.bv, model.Weight(p + "attn_v.bias", {kv}));
  }
  std::vector<const Tensor*> checked = {&L.wq, &L.wk, &L.wv, &L.w_gate, &L.w_up};
  if (check_output_projections) checked.insert(checked.end(), {&L.wo, &L.w_down});
  for (const Tensor* t : checked) {
    absl::Status st = cu::CheckWeightShape(t->dtype, t->cols());
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          StrCat(model.path(), ": layer ", l, " cannot run on CUDA: ", st.message()));
    }
  }
  return L;
}

absl::Status BatchCells::Add(std::span<const LayerSpan::Part> parts,
                             const KvLayout& want,
                             const std::function<absl::Status(const KvCache&)>& check_pages) {
  rows_ = 0;
  for (const LayerSpan::Part& p : parts) {
    if (p.kv == nullptr || p.kv->layout().n_layers != want.n_layers ||
        p.kv->layout().kv_dim != want.kv_dim) {
      return absl::FailedPreconditionError("KV cache layout does not match the layer span");
    }
    rows_ += static_cast<int64_t>(p.rows.size());
  }
  if (rows_ == 0) return absl::OkStatus();
  for (const LayerSpan::Part& p : parts) RETURN_IF_ERROR(check_pages(*p.kv));
  std::vector<KvCache::Cell> cells;
  for (const LayerSpan::Part& p : parts) {
    cells.resize(p.rows.size());
    for (size_t i = 0; i < p.rows.size(); ++i) cells[i] = {p.rows[i].pos, p.rows[i].seqs};
    auto slots = p.kv->AddCells(cells);
    if (!slots.ok()) {
      Release();
      return slots.status();
    }
    added_.emplace_back(p.kv, std::move(*slots));
  }
  for (const LayerSpan::Part& p : parts) {
    if (absl::Status st = check_pages(*p.kv); !st.ok()) {
      Release();
      return st;
    }
  }
  return absl::OkStatus();
}

void BatchCells::Describe(std::span<const LayerSpan::Part> parts,
                          const std::function<int32_t(const KvCache&)>& append_pages,
                          std::vector<kernels::cuda::KvRowInfo>& row_info,
                          std::vector<int32_t>& positions,
                          std::vector<int32_t>& visible) const {
  row_info.clear();
  positions.clear();
  visible.clear();
  std::vector<std::pair<int32_t, int32_t>> ranges;
  for (size_t pi = 0; pi < parts.size(); ++pi) {
    const LayerSpan::Part& p = parts[pi];
    const int32_t table_offset = append_pages(*p.kv);
    ranges.clear();
    AppendVisible(*p.kv, p.rows, visible, ranges);
    for (size_t i = 0; i < p.rows.size(); ++i) {
      kernels::cuda::KvRowInfo info;
      info.slot = added_[pi].second[i];
      info.vis_offset = ranges[i].first;
      info.vis_count = ranges[i].second;
      info.table_offset = table_offset;
      info.page_cells = p.kv->page_cells();
      row_info.push_back(info);
      positions.push_back(p.rows[i].pos);
    }
  }
}

void BatchCells::Release() {
  for (auto& [kv, slots] : added_) kv->FreeSlots(slots);
  added_.clear();
}

void BatchCells::ReleaseCancelled(std::span<const LayerSpan::Part> parts) {
  for (size_t i = 0; i < added_.size(); ++i) {
    if (PartCancelled(parts[i])) {
      added_[i].first->FreeSlots(added_[i].second);
      added_[i].second.clear();
      if (parts[i].cancelled) *parts[i].cancelled = true;
    }
  }
}

bool StopRequested(std::span<const LayerSpan::Part> parts, const std::atomic<bool>* cancel) {
  bool all_cancelled = true;
  for (const LayerSpan::Part& p : parts) all_cancelled = all_cancelled && PartCancelled(p);
  if (!all_cancelled && (cancel == nullptr || !cancel->load(std::memory_order_acquire))) {
    return false;
  }
  for (const LayerSpan::Part& p : parts) {
    if (p.cancelled) *p.cancelled = true;
  }
  return true;
}

UploadLayout::UploadLayout(int64_t rows,
                           int64_t n_embd,
                           const std::vector<kernels::cuda::KvRowInfo>& row_info,
                           const std::vector<int32_t>& positions,
                           const std::vector<int32_t>& visible,
                           size_t table_entries) {
  hidden_bytes = static_cast<size_t>(rows * n_embd) * sizeof(float);
  rows_at = AlignUp(hidden_bytes, 256);
  positions_at = AlignUp(rows_at + row_info.size() * sizeof(kernels::cuda::KvRowInfo), 256);
  visible_at = AlignUp(positions_at + positions.size() * sizeof(int32_t), 256);
  table_at = AlignUp(visible_at + visible.size() * sizeof(int32_t), 256);
  total = table_at + table_entries * sizeof(uint64_t);
}

void UploadLayout::Pack(uint8_t* host,
                        const float* hidden,
                        const std::vector<kernels::cuda::KvRowInfo>& row_info,
                        const std::vector<int32_t>& positions,
                        const std::vector<int32_t>& visible,
                        const std::vector<uint64_t>& table) const {
  std::memcpy(host, hidden, hidden_bytes);
  std::memcpy(host + rows_at, row_info.data(), row_info.size() * sizeof(kernels::cuda::KvRowInfo));
  std::memcpy(host + positions_at, positions.data(), positions.size() * sizeof(int32_t));
  std::memcpy(host + visible_at, visible.data(), visible.size() * sizeof(int32_t));
  std::memcpy(host + table_at, table.data(), table.size() * sizeof(uint64_t));
}

kernels::cuda::KvArgs UploadLayout::Kv(const uint8_t* dev) const {
  kernels::cuda::KvArgs kv;
  kv.rows = reinterpret_cast<const kernels::cuda::KvRowInfo*>(dev + rows_at);
  kv.visible = reinterpret_cast<const int32_t*>(dev + visible_at);
  kv.pages = reinterpret_cast<uint16_t* const*>(dev + table_at);
  return kv;
}

}  // namespace strata::model::cuda_internal
