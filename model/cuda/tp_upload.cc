#include <algorithm>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/status.h"
#include "common/strings.h"
#include "model/cuda/span_internal.h"
#include "model/cuda/tp_span_impl.h"

namespace strata::model {
namespace {

namespace cu = kernels::cuda;
using cuda_internal::DeviceGuard;
using cuda_internal::HostLayer;
using kernels::DType;
using kernels::Tensor;

// The column granularity the CUDA products need for `dtype`: 32, or 256 for K-quants.
int64_t ColumnMultiple(DType dtype) { return cu::CheckWeightShape(dtype, 32).ok() ? 32 : 256; }

// f32 values [r.begin, r.begin + r.size) of a vector, as a view.
Tensor SliceVector(const Tensor& t, TpRange r) {
  return Tensor(static_cast<float*>(t.data) + r.begin, DType::kF32, {r.size});
}

// A product to upload: slices of matrices sharing one input, stacked when their dtypes match and
// fusing is on; `biases` (optional) are the slices' biases, one per slice.
struct SliceGroup {
  std::vector<cu::WeightSlice> slices;
  std::vector<Tensor> biases;
};

std::vector<SliceGroup> Groups(const std::vector<cu::WeightSlice>& slices,
                               const std::vector<Tensor>& biases,
                               bool fuse) {
  bool same = fuse;
  for (const cu::WeightSlice& s : slices) same = same && s.tensor->dtype == slices[0].tensor->dtype;
  std::vector<SliceGroup> out;
  for (size_t i = 0; i < slices.size(); ++i) {
    if (!same || out.empty()) out.emplace_back();
    out.back().slices.push_back(slices[i]);
    if (!biases.empty()) out.back().biases.push_back(biases[i]);
  }
  return out;
}

size_t GroupBytes(const SliceGroup& g) {
  int64_t n = 0;
  for (const cu::WeightSlice& s : g.slices) n += s.rows < 0 ? s.tensor->rows() : s.rows;
  const cu::WeightSlice& s0 = g.slices[0];
  const int64_t k = s0.cols < 0 ? s0.tensor->cols() : s0.cols;
  size_t bytes = cu::UploadBytes(s0.tensor->dtype, n, k);
  if (!g.biases.empty()) bytes += cu::DeviceArena::Round(n * sizeof(float));
  return bytes;
}

// The products of one layer for one shard.
struct ShardLayerGroups {
  std::vector<SliceGroup> qkv, wo, gate_up, down;
};

ShardLayerGroups LayerGroups(const HostLayer& L, const TpShardPlan& p, bool qkv_bias, bool fuse) {
  ShardLayerGroups g;
  std::vector<Tensor> biases;
  if (qkv_bias) {
    biases = {SliceVector(L.bq, p.q), SliceVector(L.bk, p.kv), SliceVector(L.bv, p.kv)};
  }
  g.qkv = Groups({{&L.wq, p.q.begin, p.q.size},
                  {&L.wk, p.kv.begin, p.kv.size},
                  {&L.wv, p.kv.begin, p.kv.size}},
                 biases,
                 fuse);
  g.wo = Groups({{&L.wo, 0, -1, p.q.begin, p.q.size}}, {}, fuse);
  g.gate_up =
      Groups({{&L.w_gate, p.ff.begin, p.ff.size}, {&L.w_up, p.ff.begin, p.ff.size}}, {}, fuse);
  g.down = Groups({{&L.w_down, 0, -1, p.ff.begin, p.ff.size}}, {}, fuse);
  return g;
}

}  // namespace

absl::Status CudaTpSpanBackend::Impl::UploadShard(Shard& sh) {
  std::vector<HostLayer> host;
  for (int l = first; l < last; ++l) {
    ASSIGN_OR_RETURN(HostLayer L,
                     cuda_internal::ReadLayer(*model, l, /*check_output_projections=*/false));
    host.push_back(L);
  }
  const bool fuse = options.fuse_projections;
  const size_t e_bytes = cu::DeviceArena::Round(hp.n_embd * sizeof(float));
  size_t total = 0;
  for (const HostLayer& L : host) {
    total += 2 * e_bytes;
    const ShardLayerGroups g = LayerGroups(L, sh.plan, hp.qkv_bias, fuse);
    for (const auto* gs : {&g.qkv, &g.wo, &g.gate_up, &g.down}) {
      for (const SliceGroup& x : *gs) total += GroupBytes(x);
    }
  }
  ASSIGN_OR_RETURN(sh.weights, cu::DeviceArena::Create(sh.device, total));

  auto upload = [&](const std::vector<SliceGroup>& groups, std::vector<Proj>& out) -> absl::Status {
    int64_t col = 0;
    for (const SliceGroup& g : groups) {
      Proj p;
      ASSIGN_OR_RETURN(p.w, cu::UploadWeight(g.slices, sh.weights));
      p.col = col;
      p.format = cu::ActFormatFor(p.w.dtype);
      if (!g.biases.empty()) {
        std::vector<const Tensor*> bias_ptrs;
        for (const Tensor& b : g.biases) bias_ptrs.push_back(&b);
        ASSIGN_OR_RETURN(p.bias, cu::UploadFloats(bias_ptrs, sh.weights));
      }
      col += p.w.n;
      out.push_back(p);
    }
    return absl::OkStatus();
  };
  for (const HostLayer& L : host) {
    Layer D;
    const Tensor* an[] = {&L.attn_norm};
    const Tensor* fn[] = {&L.ffn_norm};
    ASSIGN_OR_RETURN(D.attn_norm, cu::UploadFloats(an, sh.weights));
    ASSIGN_OR_RETURN(D.ffn_norm, cu::UploadFloats(fn, sh.weights));
    const ShardLayerGroups g = LayerGroups(L, sh.plan, hp.qkv_bias, fuse);
    RETURN_IF_ERROR(upload(g.qkv, D.qkv));
    RETURN_IF_ERROR(upload(g.wo, D.wo));
    RETURN_IF_ERROR(upload(g.gate_up, D.gate_up));
    RETURN_IF_ERROR(upload(g.down, D.down));
    sh.layers.push_back(std::move(D));
  }
  return absl::OkStatus();
}

absl::Status CudaTpSpanBackend::Impl::Upload() {
  // The column multiple every layer's wo and ffn_down need.
  int64_t multiple = 32;
  for (int l = first; l < last; ++l) {
    ASSIGN_OR_RETURN(HostLayer L,
                     cuda_internal::ReadLayer(*model, l, /*check_output_projections=*/false));
    multiple = std::max({multiple, ColumnMultiple(L.wo.dtype), ColumnMultiple(L.w_down.dtype)});
  }
  ASSIGN_OR_RETURN(std::vector<TpShardPlan> plans, PlanTensorParallel(hp, n(), multiple));
  for (int s = 0; s < n(); ++s) {
    Shard& sh = shards[s];
    sh.plan = plans[s];
    DeviceGuard guard(sh.device);
    RETURN_IF_ERROR(UploadShard(sh));
    ASSIGN_OR_RETURN(sh.stream, cu::Stream::Create(sh.device));
    ASSIGN_OR_RETURN(sh.partial_ready, cu::Event::Create(sh.device));
    ASSIGN_OR_RETURN(sh.reduced, cu::Event::Create(sh.device));
  }
  return absl::OkStatus();
}

absl::Status CudaTpSpanBackend::Impl::Reserve(Shard& sh, int64_t n_rows) {
  if (n_rows <= sh.rows_capacity) return absl::OkStatus();
  const int64_t rows =
      std::max<int64_t>(n_rows, std::min<int64_t>(2 * sh.rows_capacity, n_rows + 256));
  const int64_t e = hp.n_embd, ff = sh.plan.ff.size;
  auto f32 = [&](cu::DeviceBuffer& b, int64_t count) {
    return b.Reserve(sh.device, static_cast<size_t>(count) * sizeof(float));
  };
  RETURN_IF_ERROR(f32(sh.norm, rows * e));
  RETURN_IF_ERROR(f32(sh.qkv, rows * sh.qkv_ld()));
  RETURN_IF_ERROR(f32(sh.attn, rows * sh.plan.q.size));
  RETURN_IF_ERROR(f32(sh.gate_up, rows * 2 * ff));
  RETURN_IF_ERROR(f32(sh.ffn_act, rows * ff));
  RETURN_IF_ERROR(f32(sh.partial, rows * e));
  RETURN_IF_ERROR(f32(sh.gather, static_cast<int64_t>(n()) * rows * e));
  const int64_t max_k = std::max<int64_t>({e, sh.plan.q.size, ff});
  std::array<bool, cu::kNumActFormats> used{};
  for (const Layer& L : sh.layers) {
    for (const auto* ps : {&L.qkv, &L.wo, &L.gate_up, &L.down}) {
      for (const Proj& p : *ps) used[static_cast<int>(p.format)] = true;
    }
  }
  for (int f = 1; f < cu::kNumActFormats; ++f) {
    if (!used[f]) continue;
    RETURN_IF_ERROR(sh.act_codes[f].Reserve(sh.device, cu::ActCodeBytes(rows, max_k)));
    RETURN_IF_ERROR(sh.act_meta[f].Reserve(sh.device, cu::ActMetaBytes(rows, max_k)));
  }
  sh.rows_capacity = rows;
  return absl::OkStatus();
}

}  // namespace strata::model
