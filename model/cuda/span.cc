#include "model/cuda/span.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/status.h"
#include "common/strings.h"
#include "kernels/cuda/device.h"
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

class CudaKvPool final : public KvPool {
 public:
  CudaKvPool(int device, size_t max_bytes) : KvPool(max_bytes), device_(device) {}
  ~CudaKvPool() override { ReleaseSpare(); }

 protected:
  uint16_t* AllocatePage(size_t bytes) override {
    DeviceGuard guard(device_);
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return static_cast<uint16_t*>(p);
  }
  // On the legacy default stream: ordered after the work already queued on the backends' (blocking)
  // streams and before any queued later, so a reused page is never zeroed under a running kernel.
  void ZeroPage(uint16_t* page, size_t bytes) override {
    DeviceGuard guard(device_);
    cudaMemsetAsync(page, 0, bytes, nullptr);
  }
  void FreePage(uint16_t* page) override {
    DeviceGuard guard(device_);
    cudaFree(page);
  }

 private:
  int device_;
};

}  // namespace

std::unique_ptr<KvPool> NewCudaKvPool(int device, size_t max_bytes) {
  return std::make_unique<CudaKvPool>(device, max_bytes);
}

struct CudaSpanBackend::Impl {
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

  int device = 0;
  std::string device_name;
  std::shared_ptr<const Model> model;
  HParams hp;
  int first = 0, last = 0;
  CudaSpanOptions options;
  cu::DeviceArena weights;
  std::vector<Layer> layers;
  cu::Stream stream;
  std::array<cu::Event, 2> layer_done;

  // Scratch, grown to the largest batch seen.
  int64_t rows_capacity = 0;
  cu::DeviceBuffer upload, norm, qkv, attn, gate_up, ffn_act;
  std::array<cu::DeviceBuffer, cu::kNumActFormats> act_codes, act_meta;
  cu::PinnedBuffer staging;
  // Host-side per-forward state.
  std::vector<cu::KvRowInfo> row_info;
  std::vector<int32_t> positions, visible;
  std::vector<uint64_t> table;
  absl::flat_hash_set<const void*> device_pages;  // pages checked to be memory of `device`

  int64_t qkv_ld() const { return hp.q_dim() + 2 * static_cast<int64_t>(hp.kv_dim()); }
  int64_t max_k() const { return std::max<int64_t>({hp.n_embd, hp.q_dim(), hp.n_ff}); }

  absl::Status Upload(const CudaSpanOptions& opts);
  absl::Status Reserve(int64_t n);
  absl::Status CheckPages(const KvCache& kv);
  absl::Status Project(const std::vector<Proj>& projs,
                       const float* x,
                       int64_t k,
                       int64_t n,
                       float* y,
                       int64_t ldy,
                       bool accumulate);
  absl::Status RunLayer(
      int l, int64_t n, const int32_t* positions_dev, const cu::KvArgs& kv_base, float* hidden);
};

namespace {

// Groups of matrices sharing one input that are stacked into one device weight: all of them when
// fusing and their dtypes match, else one group each.
std::vector<std::vector<const Tensor*>> Groups(std::vector<const Tensor*> ts, bool fuse) {
  bool same = fuse;
  for (const Tensor* t : ts) same = same && t->dtype == ts[0]->dtype;
  if (same) return {ts};
  std::vector<std::vector<const Tensor*>> out;
  for (const Tensor* t : ts) out.push_back({t});
  return out;
}

size_t GroupBytes(const std::vector<const Tensor*>& g) {
  int64_t n = 0;
  for (const Tensor* t : g) n += t->rows();
  return cu::UploadBytes(g[0]->dtype, n, g[0]->cols());
}

}  // namespace

absl::Status CudaSpanBackend::Impl::Upload(const CudaSpanOptions& opts) {
  std::vector<HostLayer> host;
  for (int l = first; l < last; ++l) {
    ASSIGN_OR_RETURN(HostLayer L,
                     cuda_internal::ReadLayer(*model, l, /*check_output_projections=*/true));
    host.push_back(L);
  }
  // Size the arena: vectors, then every group of every layer.
  const size_t e_bytes = cu::DeviceArena::Round(hp.n_embd * sizeof(float));
  const size_t bias_bytes = cu::DeviceArena::Round(qkv_ld() * sizeof(float));
  size_t total = 0;
  for (const HostLayer& L : host) {
    total += 2 * e_bytes + (hp.qkv_bias ? 3 * bias_bytes : 0);
    for (const auto& g : Groups({&L.wq, &L.wk, &L.wv}, opts.fuse_projections))
      total += GroupBytes(g);
    for (const auto& g : Groups({&L.w_gate, &L.w_up}, opts.fuse_projections))
      total += GroupBytes(g);
    total += GroupBytes({&L.wo}) + GroupBytes({&L.w_down});
  }
  ASSIGN_OR_RETURN(weights, cu::DeviceArena::Create(device, total));

  auto upload_groups = [&](const std::vector<const Tensor*>& ts,
                           const std::vector<const Tensor*>& biases,
                           std::vector<Proj>& out) -> absl::Status {
    int64_t col = 0;
    size_t t_index = 0;
    for (const auto& g : Groups(ts, opts.fuse_projections)) {
      std::vector<cu::WeightSlice> slices;
      std::vector<const Tensor*> group_bias;
      for (const Tensor* t : g) {
        slices.push_back({t});
        if (!biases.empty()) group_bias.push_back(biases[t_index]);
        ++t_index;
      }
      Proj p;
      ASSIGN_OR_RETURN(p.w, cu::UploadWeight(slices, weights));
      p.col = col;
      p.format = cu::ActFormatFor(p.w.dtype);
      if (!group_bias.empty()) {
        ASSIGN_OR_RETURN(p.bias, cu::UploadFloats(group_bias, weights));
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
    ASSIGN_OR_RETURN(D.attn_norm, cu::UploadFloats(an, weights));
    ASSIGN_OR_RETURN(D.ffn_norm, cu::UploadFloats(fn, weights));
    std::vector<const Tensor*> biases;
    if (hp.qkv_bias) biases = {&L.bq, &L.bk, &L.bv};
    RETURN_IF_ERROR(upload_groups({&L.wq, &L.wk, &L.wv}, biases, D.qkv));
    RETURN_IF_ERROR(upload_groups({&L.wo}, {}, D.wo));
    RETURN_IF_ERROR(upload_groups({&L.w_gate, &L.w_up}, {}, D.gate_up));
    RETURN_IF_ERROR(upload_groups({&L.w_down}, {}, D.down));
    layers.push_back(std::move(D));
  }
  return absl::OkStatus();
}

absl::Status CudaSpanBackend::Impl::Reserve(int64_t n) {
  if (n <= rows_capacity) return absl::OkStatus();
  const int64_t rows = std::max<int64_t>(n, std::min<int64_t>(2 * rows_capacity, n + 256));
  const int64_t e = hp.n_embd, ff = hp.n_ff;
  auto f32 = [&](cu::DeviceBuffer& b, int64_t count) {
    return b.Reserve(device, static_cast<size_t>(count) * sizeof(float));
  };
  RETURN_IF_ERROR(f32(norm, rows * e));
  RETURN_IF_ERROR(f32(qkv, rows * qkv_ld()));
  RETURN_IF_ERROR(f32(attn, rows * hp.q_dim()));
  RETURN_IF_ERROR(f32(gate_up, rows * 2 * ff));
  RETURN_IF_ERROR(f32(ffn_act, rows * ff));
  std::array<bool, cu::kNumActFormats> used{};
  for (const Layer& L : layers) {
    for (const auto* ps : {&L.qkv, &L.wo, &L.gate_up, &L.down}) {
      for (const Proj& p : *ps) used[static_cast<int>(p.format)] = true;
    }
  }
  for (int f = 1; f < cu::kNumActFormats; ++f) {
    if (!used[f]) continue;
    RETURN_IF_ERROR(act_codes[f].Reserve(device, cu::ActCodeBytes(rows, max_k())));
    RETURN_IF_ERROR(act_meta[f].Reserve(device, cu::ActMetaBytes(rows, max_k())));
  }
  rows_capacity = rows;
  return absl::OkStatus();
}

absl::Status CudaSpanBackend::Impl::CheckPages(const KvCache& kv) {
  const int pc = kv.page_cells();
  for (size_t p = 0; p < kv.pages(); ++p) {
    const uint16_t* page = kv.K(static_cast<int32_t>(p * pc), 0);
    if (device_pages.contains(page)) continue;
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, page);
    cudaGetLastError();
    if (err != cudaSuccess || attr.type != cudaMemoryTypeDevice || attr.device != device) {
      return absl::FailedPreconditionError(
          StrCat("a KV cache page is not device memory of cuda:",
                 device,
                 " (caches of a CUDA span must come from its NewCudaKvPool)"));
    }
    if (device_pages.size() > (1u << 20)) device_pages.clear();
    device_pages.insert(page);
  }
  return absl::OkStatus();
}

absl::Status CudaSpanBackend::Impl::Project(const std::vector<Proj>& projs,
                                            const float* x,
                                            int64_t k,
                                            int64_t n,
                                            float* y,
                                            int64_t ldy,
                                            bool accumulate) {
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
      int8_t* codes = act_codes[f].as<int8_t>();
      float* meta = act_meta[f].as<float>();
      if (!done[f]) {
        RETURN_IF_ERROR(cu::QuantizeActivations(p.format, x, k, n, k, codes, meta, stream.get()));
        done[f] = true;
      }
      view.q = codes;
      view.meta = meta;
    }
    RETURN_IF_ERROR(cu::MatMul(p.w, view, n, y + p.col, ldy, {p.bias, accumulate}, stream.get()));
  }
  return absl::OkStatus();
}

absl::Status CudaSpanBackend::Impl::RunLayer(
    int l, int64_t n, const int32_t* positions_dev, const cu::KvArgs& kv_base, float* hidden) {
  const Layer& L = layers[l];
  const int64_t e = hp.n_embd, q_dim = hp.q_dim(), kv_dim = hp.kv_dim(), ff = hp.n_ff;
  const int64_t ld = qkv_ld();
  cudaStream_t s = stream.get();
  float* nrm = norm.as<float>();
  float* q = qkv.as<float>();
  cu::KvArgs kv = kv_base;
  kv.layer = l;

  RETURN_IF_ERROR(cu::RmsNorm(hidden, L.attn_norm, n, e, hp.rms_eps, nrm, s));
  RETURN_IF_ERROR(Project(L.qkv, nrm, e, n, q, ld, false));
  const cu::RopeArgs rope{hp.head_dim, hp.rot_dim, hp.rope_base, hp.rope_freq_scale, hp.rope_neox};
  // Query heads then key heads, consecutive in each row of the q|k|v buffer.
  RETURN_IF_ERROR(cu::Rope(q, ld, positions_dev, n, hp.n_head + hp.n_head_kv, rope, s));
  RETURN_IF_ERROR(cu::StoreKv(q + q_dim, q + q_dim + kv_dim, ld, n, kv, s));
  const cu::AttentionArgs aa{
      hp.n_head, hp.n_head_kv, hp.head_dim, 1.0f / std::sqrt(static_cast<float>(hp.head_dim))};
  RETURN_IF_ERROR(cu::Attention(q, ld, n, aa, kv, attn.as<float>(), q_dim, s));
  RETURN_IF_ERROR(Project(L.wo, attn.as<float>(), q_dim, n, hidden, e, true));

  RETURN_IF_ERROR(cu::RmsNorm(hidden, L.ffn_norm, n, e, hp.rms_eps, nrm, s));
  RETURN_IF_ERROR(Project(L.gate_up, nrm, e, n, gate_up.as<float>(), 2 * ff, false));
  RETURN_IF_ERROR(cu::SwiGlu(
      gate_up.as<float>(), gate_up.as<float>() + ff, 2 * ff, n, ff, ffn_act.as<float>(), ff, s));
  return Project(L.down, ffn_act.as<float>(), ff, n, hidden, e, true);
}

CudaSpanBackend::CudaSpanBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudaSpanBackend::~CudaSpanBackend() {
  if (impl_) {
    cudaSetDevice(impl_->device);
    cudaStreamSynchronize(impl_->stream.get());
  }
}

absl::StatusOr<std::unique_ptr<CudaSpanBackend>> CudaSpanBackend::Load(
    std::shared_ptr<const Model> model, int first, int last, const CudaSpanOptions& options) {
  const HParams& hp = model->hparams();
  if (first < 0 || last > hp.n_layer || first >= last) {
    return absl::InvalidArgumentError(StrCat(
        "layer span [", first, ", ", last, ") is not inside the model's [0, ", hp.n_layer, ")"));
  }
  if (hp.head_dim > 256 || hp.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        StrCat("head size ", hp.head_dim, " is not supported by the CUDA attention (<= 256)"));
  }
  ASSIGN_OR_RETURN(cu::DeviceInfo info, cu::GetDeviceInfo(options.device));
  auto impl = std::make_unique<Impl>();
  impl->device = options.device;
  impl->device_name = info.name;
  impl->model = model;
  impl->hp = hp;
  impl->first = first;
  impl->last = last;
  impl->options = options;
  DeviceGuard guard(options.device);
  RETURN_IF_ERROR(impl->Upload(options));
  ASSIGN_OR_RETURN(impl->stream, cu::Stream::Create(options.device));
  for (cu::Event& e : impl->layer_done) {
    ASSIGN_OR_RETURN(e, cu::Event::Create(options.device));
  }
  return std::unique_ptr<CudaSpanBackend>(new CudaSpanBackend(std::move(impl)));
}

std::string CudaSpanBackend::name() const {
  return StrCat("cuda:", impl_->device, " (", impl_->device_name, ")");
}
int CudaSpanBackend::first_layer() const { return impl_->first; }
int CudaSpanBackend::last_layer() const { return impl_->last; }
KvLayout CudaSpanBackend::kv_layout() const {
  return {impl_->last - impl_->first, impl_->hp.kv_dim()};
}
int CudaSpanBackend::device() const { return impl_->device; }
size_t CudaSpanBackend::weight_bytes() const { return impl_->weights.used(); }

absl::Status CudaSpanBackend::ForwardBatch(std::span<const LayerSpan::Part> parts,
                                           float* hidden,
                                           const std::atomic<bool>* cancel) {
  Impl& m = *impl_;
  DeviceGuard guard(m.device);
  cuda_internal::BatchCells cells;
  RETURN_IF_ERROR(
      cells.Add(parts, kv_layout(), [&](const KvCache& kv) { return m.CheckPages(kv); }));
  const int64_t n = cells.rows();
  if (n == 0) return absl::OkStatus();

  // Row metadata, visible lists and the page table, uploaded together.
  m.table.clear();
  cells.Describe(
      parts,
      [&](const KvCache& kv) {
        const int32_t offset = static_cast<int32_t>(m.table.size());
        const int pc = kv.page_cells();
        for (size_t pg = 0; pg < kv.pages(); ++pg) {
          m.table.push_back(reinterpret_cast<uint64_t>(kv.K(static_cast<int32_t>(pg * pc), 0)));
        }
        return offset;
      },
      m.row_info,
      m.positions,
      m.visible);
  const cuda_internal::UploadLayout up(
      n, m.hp.n_embd, m.row_info, m.positions, m.visible, m.table.size());
  const size_t hidden_bytes = up.hidden_bytes;
  const size_t total = up.total;
  auto fail = [&](absl::Status st) {
    cudaStreamSynchronize(m.stream.get());
    cudaGetLastError();
    cells.Release();
    return st;
  };
  if (absl::Status st = m.Reserve(n); !st.ok()) return fail(st);
  if (absl::Status st = m.upload.Reserve(m.device, total); !st.ok()) return fail(st);
  if (absl::Status st = m.staging.Reserve(std::max(total, hidden_bytes)); !st.ok()) return fail(st);
  uint8_t* host = m.staging.as<uint8_t>();
  up.Pack(host, hidden, m.row_info, m.positions, m.visible, m.table);
  uint8_t* dev = m.upload.as<uint8_t>();
  cudaStream_t s = m.stream.get();
  if (absl::Status st = cu::CudaStatus(cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, s),
                                       "copy rows to the GPU");
      !st.ok()) {
    return fail(st);
  }
  float* hidden_dev = reinterpret_cast<float*>(dev);
  cu::KvArgs kv_base = up.Kv(dev);
  kv_base.kv_dim = m.hp.kv_dim();
  const int32_t* positions_dev = up.Positions(dev);

  const int n_layers = static_cast<int>(m.layers.size());
  for (int l = 0; l < n_layers; ++l) {
    if (cuda_internal::StopRequested(parts, cancel)) {
      (void)fail(absl::OkStatus());
      return absl::CancelledError("forward cancelled");
    }
    // Stay at most two layers ahead of the GPU so cancellation takes effect promptly.
    cu::Event& done = m.layer_done[l % 2];
    if (l >= 2) {
      if (absl::Status st = cu::CudaStatus(cudaEventSynchronize(done.get()), "layer wait");
          !st.ok()) {
        return fail(st);
      }
    }
    if (absl::Status st = m.RunLayer(l, n, positions_dev, kv_base, hidden_dev); !st.ok()) {
      return fail(st);
    }
    if (absl::Status st = cu::CudaStatus(cudaEventRecord(done.get(), s), "cudaEventRecord");
        !st.ok()) {
      return fail(st);
    }
  }
  if (absl::Status st =
          cu::CudaStatus(cudaMemcpyAsync(host, hidden_dev, hidden_bytes, cudaMemcpyDeviceToHost, s),
                         "copy rows from the GPU");
      !st.ok()) {
    return fail(st);
  }
  if (absl::Status st = m.stream.Synchronize(); !st.ok()) return fail(st);
  std::memcpy(hidden, host, hidden_bytes);
  cells.ReleaseCancelled(parts);  // parts given up during the pass keep no cells
  return absl::OkStatus();
}

}  // namespace strata::model
