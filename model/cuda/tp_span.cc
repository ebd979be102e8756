#include "model/cuda/tp_span.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/strings.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/nccl_link.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/weights.h"
#include "model/cuda/span_internal.h"

namespace strata::model {
namespace {

namespace cu = kernels::cuda;
using cuda_internal::DeviceGuard;
using cuda_internal::HostLayer;
using kernels::DType;
using kernels::Tensor;

// The column granularity the CUDA products need for `dtype`: 32, or 256 for K-quants.
int64_t ColumnMultiple(DType dtype) { return cu::CheckWeightShape(dtype, 32).ok() ? 32 : 256; }

}  // namespace

struct CudaTpSpanBackend::Impl {
  // One product: a device weight writing columns [col, col + w.n) of its output rows.
  struct Proj {
    cu::DeviceWeightView w;
    int64_t col = 0;
    cu::ActFormat format = cu::ActFormat::kF32;
    const float* bias = nullptr;
  };
  struct Layer {
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    std::vector<Proj> qkv, wo, gate_up, down;
  };
  // Everything one device holds for its slice, and its per-forward scratch.
  struct Shard {
    int device = 0;
    TpShardPlan plan;
    cu::DeviceArena weights;
    std::vector<Layer> layers;
    cu::Stream stream;
    cu::Event partial_ready, reduced;
    int64_t rows_capacity = 0;
    // norm | q|k|v | attention | gate|up | swiglu | this shard's partial sums | every shard's.
    cu::DeviceBuffer upload, norm, qkv, attn, gate_up, ffn_act, partial, gather;
    std::array<cu::DeviceBuffer, cu::kNumActFormats> act_codes, act_meta;
    cu::PinnedBuffer staging;
    std::vector<uint64_t> table;  // this shard's device pages, per forward
    float* hidden_dev = nullptr;  // this forward's hidden rows on the device
    cu::KvArgs kv_base;
    const int32_t* positions_dev = nullptr;

    int64_t qkv_ld() const { return plan.q.size + 2 * plan.kv.size; }
  };

  std::vector<int> devices;
  std::string device_name;
  std::shared_ptr<const Model> model;
  HParams hp;
  int first = 0, last = 0;
  CudaTpSpanOptions options;
  std::deque<Shard> shards;                        // (Shard is not movable)
  std::unique_ptr<cu::TensorParallelGroup> group;  // null: the copy reducer
  std::string reducer;
  std::array<cu::Event, 2> layer_done;  // on shard 0's stream
  // Host-side per-forward state shared by the shards.
  std::vector<cu::KvRowInfo> row_info;
  std::vector<int32_t> positions, visible;

  int n() const { return static_cast<int>(shards.size()); }
  absl::Status Upload();
  absl::Status UploadShard(Shard& sh);
  absl::Status Reserve(Shard& sh, int64_t rows);
  absl::Status CheckPages(const KvCache& kv);
  absl::Status Project(Shard& sh,
                       const std::vector<Proj>& projs,
                       const float* x,
                       int64_t k,
                       int64_t rows,
                       float* y,
                       int64_t ldy);
  absl::Status Attention(Shard& sh, int l, int64_t rows);
  absl::Status Ffn(Shard& sh, int l, int64_t rows);
  // hidden (on every shard) += sum over shards of their partials, in rank order.
  absl::Status Reduce(int64_t rows);
  absl::Status SyncAll();
};

namespace {

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

absl::Status CudaTpSpanBackend::Impl::CheckPages(const KvCache& kv) {
  const int pc = kv.page_cells();
  for (size_t p = 0; p < kv.pages(); ++p) {
    // Looked up every time (no cache of known handles): a freed record's address may come back
    // as a page of another pool.
    if (cuda_internal::TpShardPages(kv.K(static_cast<int32_t>(p * pc), 0), devices) == nullptr) {
      return absl::FailedPreconditionError(
          "a KV cache page is not from a tensor-parallel pool over this span's devices (caches "
          "of a tensor-parallel span must come from NewCudaTpKvPool with the same device list)");
    }
  }
  return absl::OkStatus();
}

absl::Status CudaTpSpanBackend::Impl::Project(Shard& sh,
                                              const std::vector<Proj>& projs,
                                              const float* x,
                                              int64_t k,
                                              int64_t rows,
                                              float* y,
                                              int64_t ldy) {
  std::array<bool, cu::kNumActFormats> done{};
  for (const Proj& p : projs) {
    const int f = static_cast<int>(p.format);
    cu::DeviceActView view;
    view.format = p.format;
    view.k = k;
    if (p.format == cu::ActFormat::kF32) {
      view.f = x;
      view.ldf = k;
    } else {
      int8_t* codes = sh.act_codes[f].as<int8_t>();
      float* meta = sh.act_meta[f].as<float>();
      if (!done[f]) {
        RETURN_IF_ERROR(
            cu::QuantizeActivations(p.format, x, k, rows, k, codes, meta, sh.stream.get()));
        done[f] = true;
      }
      view.q = codes;
      view.meta = meta;
    }
    RETURN_IF_ERROR(cu::MatMul(p.w, view, rows, y + p.col, ldy, {p.bias, false}, sh.stream.get()));
  }
  return absl::OkStatus();
}

// Attention of the shard's heads; leaves the shard's part of wo's output in sh.partial.
absl::Status CudaTpSpanBackend::Impl::Attention(Shard& sh, int l, int64_t rows) {
  const Layer& L = sh.layers[l];
  const TpShardPlan& p = sh.plan;
  const int64_t e = hp.n_embd, q_dim = p.q.size, kv_dim = p.kv.size, ld = sh.qkv_ld();
  cudaStream_t s = sh.stream.get();
  float* nrm = sh.norm.as<float>();
  float* q = sh.qkv.as<float>();
  cu::KvArgs kv = sh.kv_base;
  kv.layer = l;
  RETURN_IF_ERROR(cu::RmsNorm(sh.hidden_dev, L.attn_norm, rows, e, hp.rms_eps, nrm, s));
  RETURN_IF_ERROR(Project(sh, L.qkv, nrm, e, rows, q, ld));
  const cu::RopeArgs rope{hp.head_dim, hp.rot_dim, hp.rope_base, hp.rope_freq_scale, hp.rope_neox};
  RETURN_IF_ERROR(cu::Rope(q, ld, sh.positions_dev, rows, p.n_head + p.n_head_kv, rope, s));
  RETURN_IF_ERROR(cu::StoreKv(q + q_dim, q + q_dim + kv_dim, ld, rows, kv, s));
  const cu::AttentionArgs aa{
      p.n_head, p.n_head_kv, hp.head_dim, 1.0f / std::sqrt(static_cast<float>(hp.head_dim))};
  RETURN_IF_ERROR(cu::Attention(q, ld, rows, aa, kv, sh.attn.as<float>(), q_dim, s));
  return Project(sh, L.wo, sh.attn.as<float>(), q_dim, rows, sh.partial.as<float>(), e);
}

// The shard's FFN columns; leaves its part of ffn_down's output in sh.partial.
absl::Status CudaTpSpanBackend::Impl::Ffn(Shard& sh, int l, int64_t rows) {
  const Layer& L = sh.layers[l];
  const int64_t e = hp.n_embd, ff = sh.plan.ff.size;
  cudaStream_t s = sh.stream.get();
  float* nrm = sh.norm.as<float>();
  float* gu = sh.gate_up.as<float>();
  RETURN_IF_ERROR(cu::RmsNorm(sh.hidden_dev, L.ffn_norm, rows, e, hp.rms_eps, nrm, s));
  RETURN_IF_ERROR(Project(sh, L.gate_up, nrm, e, rows, gu, 2 * ff));
  RETURN_IF_ERROR(cu::SwiGlu(gu, gu + ff, 2 * ff, rows, ff, sh.ffn_act.as<float>(), ff, s));
  return Project(sh, L.down, sh.ffn_act.as<float>(), ff, rows, sh.partial.as<float>(), e);
}

absl::Status CudaTpSpanBackend::Impl::Reduce(int64_t rows) {
  const size_t count = static_cast<size_t>(rows * hp.n_embd);
  if (group != nullptr) {
    std::vector<const float*> partial;
    std::vector<float*> gather, out;
    std::vector<cudaStream_t> streams;
    for (Shard& sh : shards) {
      partial.push_back(sh.partial.as<float>());
      gather.push_back(sh.gather.as<float>());
      out.push_back(sh.hidden_dev);
      streams.push_back(sh.stream.get());
    }
    return group->AllGatherSum(partial, gather, out, count, /*accumulate=*/true, streams);
  }
  // The copy reducer: every shard gathers every partial (in rank order) once it is ready, then
  // runs the same sum as AllGatherSum.
  for (Shard& sh : shards) {
    DeviceGuard guard(sh.device);
    STRATA_CUDA_RETURN_IF_ERROR(cudaEventRecord(sh.partial_ready.get(), sh.stream.get()),
                                "cudaEventRecord");
  }
  for (Shard& dst : shards) {
    DeviceGuard guard(dst.device);
    cudaStream_t s = dst.stream.get();
    for (int r = 0; r < n(); ++r) {
      const Shard& src = shards[r];
      STRATA_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, src.partial_ready.get(), 0),
                                  "cudaStreamWaitEvent");
      STRATA_CUDA_RETURN_IF_ERROR(cudaMemcpyPeerAsync(dst.gather.as<float>() + r * count,
                                                      dst.device,
                                                      src.partial.as<float>(),
                                                      src.device,
                                                      count * sizeof(float),
                                                      s),
                                  "gather partial sums");
    }
    RETURN_IF_ERROR(cu::SumParts(dst.gather.as<float>(),
                                 n(),
                                 static_cast<int64_t>(count),
                                 dst.hidden_dev,
                                 /*accumulate=*/true,
                                 s));
    STRATA_CUDA_RETURN_IF_ERROR(cudaEventRecord(dst.reduced.get(), s), "cudaEventRecord");
  }
  // No shard writes its partial again before every shard has copied it.
  for (Shard& sh : shards) {
    DeviceGuard guard(sh.device);
    for (const Shard& other : shards) {
      if (&other == &sh) continue;
      STRATA_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(sh.stream.get(), other.reduced.get(), 0),
                                  "cudaStreamWaitEvent");
    }
  }
  return absl::OkStatus();
}

absl::Status CudaTpSpanBackend::Impl::SyncAll() {
  absl::Status first_error;
  for (Shard& sh : shards) {
    DeviceGuard guard(sh.device);
    absl::Status st = sh.stream.Synchronize();
    if (first_error.ok()) first_error = st;
  }
  return first_error;
}

CudaTpSpanBackend::CudaTpSpanBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaTpSpanBackend::~CudaTpSpanBackend() {
  if (impl_) (void)impl_->SyncAll();
}

absl::StatusOr<std::unique_ptr<CudaTpSpanBackend>> CudaTpSpanBackend::Load(
    std::shared_ptr<const Model> model, int first, int last, const CudaTpSpanOptions& options) {
  const HParams& hp = model->hparams();
  if (first < 0 || last > hp.n_layer || first >= last) {
    return absl::InvalidArgumentError(StrCat(
        "layer span [", first, ", ", last, ") is not inside the model's [0, ", hp.n_layer, ")"));
  }
  if (options.devices.empty()) {
    return absl::InvalidArgumentError("a tensor-parallel span needs at least one device");
  }
  if (hp.head_dim > 256 || hp.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        StrCat("head size ", hp.head_dim, " is not supported by the CUDA attention (<= 256)"));
  }
  auto impl = std::make_unique<Impl>();
  for (int d : options.devices) {
    ASSIGN_OR_RETURN(cu::DeviceInfo info, cu::GetDeviceInfo(d));
    if (impl->device_name.empty()) impl->device_name = info.name;
  }
  impl->devices = options.devices;
  impl->model = model;
  impl->hp = hp;
  impl->first = first;
  impl->last = last;
  impl->options = options;
  for (int d : options.devices) impl->shards.emplace_back().device = d;
  const absl::flat_hash_set<int> distinct(options.devices.begin(), options.devices.end());
  const bool repeats = distinct.size() != options.devices.size();
  if (options.reducer == TpReducer::kNccl && repeats) {
    return absl::InvalidArgumentError(
        "NCCL cannot run two ranks on one device: the device list "
        "repeats a device");
  }
  // Plans the split (INVALID_ARGUMENT when it cannot be made) before NCCL is started.
  RETURN_IF_ERROR(impl->Upload());

  if (options.reducer == TpReducer::kCopy) {
    impl->reducer = "device copies";
  } else if (repeats) {
    impl->reducer = "device copies (the device list repeats a device, which NCCL refuses)";
  } else {
    auto group = cu::TensorParallelGroup::Create(options.devices);
    if (group.ok()) {
      impl->group = std::move(*group);
      auto version = cu::NcclVersion();
      impl->reducer = StrCat("NCCL ", version.ok() ? *version : "", " all-gather sum");
    } else if (options.reducer == TpReducer::kNccl) {
      return group.status();
    } else {
      impl->reducer = StrCat("device copies (NCCL unavailable: ", group.status().message(), ")");
    }
  }
  {
    DeviceGuard guard(options.devices[0]);
    for (cu::Event& e : impl->layer_done) {
      ASSIGN_OR_RETURN(e, cu::Event::Create(options.devices[0]));
    }
  }
  auto backend = std::unique_ptr<CudaTpSpanBackend>(new CudaTpSpanBackend(std::move(impl)));
  STRATA_LOG(Info) << backend->name() << ": layers " << first << ".." << last - 1
                   << ", partial sums combined by " << backend->reducer_description();
  return backend;
}

std::string CudaTpSpanBackend::name() const {
  std::string devices;
  for (int d : impl_->devices) devices += StrCat(devices.empty() ? "" : "+", "cuda:", d);
  return StrCat(devices, " tensor-parallel (", impl_->device_name, ")");
}
int CudaTpSpanBackend::first_layer() const { return impl_->first; }
int CudaTpSpanBackend::last_layer() const { return impl_->last; }
KvLayout CudaTpSpanBackend::kv_layout() const {
  return {impl_->last - impl_->first, impl_->hp.kv_dim()};
}
const std::vector<int>& CudaTpSpanBackend::devices() const { return impl_->devices; }
bool CudaTpSpanBackend::uses_nccl() const { return impl_->group != nullptr; }
const std::string& CudaTpSpanBackend::reducer_description() const { return impl_->reducer; }
size_t CudaTpSpanBackend::weight_bytes() const {
  size_t total = 0;
  for (const Impl::Shard& sh : impl_->shards) total += sh.weights.used();
  return total;
}

absl::Status CudaTpSpanBackend::ForwardBatch(std::span<const LayerSpan::Part> parts,
                                             float* hidden,
                                             const std::atomic<bool>* cancel) {
  Impl& m = *impl_;
  DeviceGuard guard(m.devices[0]);
  cuda_internal::BatchCells cells;
  RETURN_IF_ERROR(
      cells.Add(parts, kv_layout(), [&](const KvCache& kv) { return m.CheckPages(kv); }));
  const int64_t n = cells.rows();
  if (n == 0) return absl::OkStatus();

  // Row metadata and visible lists (shared), page tables (one per shard).
  for (Impl::Shard& sh : m.shards) sh.table.clear();
  cells.Describe(
      parts,
      [&](const KvCache& kv) {
        const int32_t offset = static_cast<int32_t>(m.shards[0].table.size());
        const int pc = kv.page_cells();
        for (size_t pg = 0; pg < kv.pages(); ++pg) {
          const std::vector<uint16_t*>& pages =
              *cuda_internal::TpShardPages(kv.K(static_cast<int32_t>(pg * pc), 0), m.devices);
          for (int s = 0; s < m.n(); ++s) {
            m.shards[s].table.push_back(reinterpret_cast<uint64_t>(pages[s]));
          }
        }
        return offset;
      },
      m.row_info,
      m.positions,
      m.visible);

  // Per shard, one pinned staging area and one device upload region of the same layout.
  const cuda_internal::UploadLayout up(
      n, m.hp.n_embd, m.row_info, m.positions, m.visible, m.shards[0].table.size());
  const size_t hidden_bytes = up.hidden_bytes;
  const size_t total = up.total;
  auto fail = [&](absl::Status st) {
    (void)m.SyncAll();
    cudaGetLastError();
    cells.Release();
    return st;
  };
  for (Impl::Shard& sh : m.shards) {
    DeviceGuard shard_guard(sh.device);
    if (absl::Status st = m.Reserve(sh, n); !st.ok()) return fail(st);
    if (absl::Status st = sh.upload.Reserve(sh.device, total); !st.ok()) return fail(st);
    if (absl::Status st = sh.staging.Reserve(std::max(total, hidden_bytes)); !st.ok()) {
      return fail(st);
    }
    uint8_t* host = sh.staging.as<uint8_t>();
    up.Pack(host, hidden, m.row_info, m.positions, m.visible, sh.table);
    uint8_t* dev = sh.upload.as<uint8_t>();
    if (absl::Status st = cu::CudaStatus(
            cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, sh.stream.get()),
            "copy rows to the GPU");
        !st.ok()) {
      return fail(st);
    }
    sh.hidden_dev = reinterpret_cast<float*>(dev);
    sh.kv_base = up.Kv(dev);
    sh.kv_base.kv_dim = static_cast<int>(sh.plan.kv.size);
    sh.positions_dev = up.Positions(dev);
  }

  Impl::Shard& lead = m.shards[0];
  const int n_layers = static_cast<int>(lead.layers.size());
  for (int l = 0; l < n_layers; ++l) {
    if (cuda_internal::StopRequested(parts, cancel)) {
      (void)fail(absl::OkStatus());
      return absl::CancelledError("forward cancelled");
    }
    // Stay at most two layers ahead of the GPUs (every shard waits on every other at each
    // reduction, so shard 0's progress stands for all).
    cu::Event& done = m.layer_done[l % 2];
    if (l >= 2) {
      if (absl::Status st = cu::CudaStatus(cudaEventSynchronize(done.get()), "layer wait");
          !st.ok()) {
        return fail(st);
      }
    }
    for (Impl::Shard& sh : m.shards) {
      DeviceGuard shard_guard(sh.device);
      if (absl::Status st = m.Attention(sh, l, n); !st.ok()) return fail(st);
    }
    if (absl::Status st = m.Reduce(n); !st.ok()) return fail(st);
    for (Impl::Shard& sh : m.shards) {
      DeviceGuard shard_guard(sh.device);
      if (absl::Status st = m.Ffn(sh, l, n); !st.ok()) return fail(st);
    }
    if (absl::Status st = m.Reduce(n); !st.ok()) return fail(st);
    cudaSetDevice(lead.device);
    if (absl::Status st =
            cu::CudaStatus(cudaEventRecord(done.get(), lead.stream.get()), "cudaEventRecord");
        !st.ok()) {
      return fail(st);
    }
  }
  cudaSetDevice(lead.device);
  uint8_t* host = lead.staging.as<uint8_t>();
  if (absl::Status st = cu::CudaStatus(
          cudaMemcpyAsync(
              host, lead.hidden_dev, hidden_bytes, cudaMemcpyDeviceToHost, lead.stream.get()),
          "copy rows from the GPU");
      !st.ok()) {
    return fail(st);
  }
  if (absl::Status st = m.SyncAll(); !st.ok()) return fail(st);
  std::memcpy(hidden, host, hidden_bytes);
  cells.ReleaseCancelled(parts);  // parts given up during the pass keep no cells
  return absl::OkStatus();
}

}  // namespace strata::model
