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
#include "model/cuda/tp_span_impl.h"

namespace strata::model {
namespace {

namespace cu = kernels::cuda;
using cuda_internal::DeviceGuard;
using cuda_internal::HostLayer;
using kernels::DType;
using kernels::Tensor;

}  // namespace

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
