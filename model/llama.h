// The Llama-family forward pass, cut at the seams the swarm uses:
//   Embedder  — token ids -> hidden states (client side)
//   LayerSpan — layers [first, last) over a session's KvCache (node side)
//   Head      — final norm + output projection -> logits (client side)
// A Model maps the GGUF file and reads the hyper-parameters; each piece touches only its own
// tensors, so a node serving a few layers keeps only those pages resident.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "gguf/reader.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "model/hparams.h"
#include "model/kv_cache.h"

namespace strata::model {

class Model {
 public:
  // Maps the file and validates the metadata (no weight data is read).
  static absl::StatusOr<std::shared_ptr<const Model>> Open(const std::string& path);

  const HParams& hparams() const { return hparams_; }
  const gguf::GgufFile& gguf() const { return *file_; }
  const std::string& path() const { return path_; }
  // Identifies the model for a swarm: "<name>-<16 hex digits>" where the digits hash the file
  // size and every byte before the tensor data (metadata and tensor table). Two files with the
  // same id hold the same model layout and metadata.
  const std::string& id() const { return id_; }

  // A weight tensor checked for presence, shape (outermost first) and a supported dtype.
  absl::StatusOr<kernels::Tensor> Weight(const std::string& name,
                                         std::initializer_list<int64_t> shape) const;

 private:
  Model() = default;
  std::string path_;
  std::string id_;
  std::unique_ptr<gguf::GgufFile> file_;
  HParams hparams_;
};

// One row of a forward batch: a token position of one or more sequences.
struct Row {
  int32_t pos = 0;     // logical position
  SeqMask seqs = 1;    // the row's cell is tagged with these; it sees cells sharing one of them
  SeqMask attend = 0;  // further sequences it sees without joining them (draft-tree rows)
};

// Per-thread scratch for forward passes. Reused across calls: steady-state decoding allocates
// nothing once the largest batch has been seen.
struct ForwardScratch {
  kernels::Buffer norm, q, k, v, attn, proj, gate, up, act;
  kernels::MatMulScratch matmul;
  std::vector<int32_t> slots;             // per row: its cell slot
  std::vector<const KvCache*> row_cache;  // per row: its session's cache
  std::vector<int32_t> positions;
  std::vector<std::vector<int32_t>> visible;  // per row: visible cell slots in position order
  struct PerThread {
    std::vector<const uint16_t*> k, v;
    std::vector<float> scores;
  };
  std::vector<PerThread> per_thread;
};

class Embedder {
 public:
  static absl::StatusOr<std::unique_ptr<Embedder>> Load(std::shared_ptr<const Model> model);
  // out: tokens.size() rows of n_embd. INVALID_ARGUMENT for an id outside the vocabulary.
  absl::Status Embed(std::span<const int32_t> tokens, float* out) const;
  int n_embd() const { return model_->hparams().n_embd; }
  std::vector<kernels::Tensor> tensors() const { return {table_}; }

 private:
  std::shared_ptr<const Model> model_;
  kernels::Tensor table_;
};

class LayerSpan {
 public:
  // Layers [first, last) of the model; INVALID_ARGUMENT for an empty or out-of-range span.
  static absl::StatusOr<std::unique_ptr<LayerSpan>> Load(std::shared_ptr<const Model> model,
                                                         int first,
                                                         int last);

  int first() const { return first_; }
  int last() const { return last_; }
  int n_embd() const { return model_->hparams().n_embd; }
  const HParams& hparams() const { return model_->hparams(); }
  // The KV layout this span needs.
  KvLayout kv_layout() const { return {last_ - first_, model_->hparams().kv_dim()}; }
  // The weights this span reads.
  std::vector<kernels::Tensor> tensors() const;

  // Runs the span over `rows.size()` hidden states in place (`hidden`: rows x n_embd f32),
  // appending one cell per row to `kv` (which must use kv_layout()). Checks `cancel` at every
  // layer boundary: when set, the cells this call added are freed and CANCELLED is returned.
  // On any error the cache is left as it was.
  absl::Status Forward(std::span<const Row> rows,
                       float* hidden,
                       KvCache& kv,
                       ThreadPool& pool,
                       ForwardScratch& scratch,
                       const std::atomic<bool>* cancel = nullptr) const;

  // Rows of one session inside a multi-session batch.
  struct Part {
    KvCache* kv = nullptr;
    std::span<const Row> rows;
    // Set (from any thread) to give up on this part: checked at every layer boundary. A part
    // given up keeps no cells, its outputs are garbage, and `*cancelled` is set to true.
    const std::atomic<bool>* cancel = nullptr;
    bool* cancelled = nullptr;
  };
  // One pass over the rows of several sessions at once (their rows are consecutive in `hidden`,
  // in part order): the weights are read once for all of them. Each row's result is bit-identical
  // to running its session alone. All or nothing: on error no cache keeps cells from this call.
  // When every part is cancelled the pass stops early and returns CANCELLED.
  absl::Status ForwardBatch(std::span<const Part> parts,
                            float* hidden,
                            ThreadPool& pool,
                            ForwardScratch& scratch,
                            const std::atomic<bool>* cancel = nullptr) const;

 private:
  struct Layer {
    kernels::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    kernels::Tensor bq, bk, bv;  // qwen2 only
  };
  void Attention(int64_t n, int layer, ThreadPool& pool, ForwardScratch& s) const;

  std::shared_ptr<const Model> model_;
  int first_ = 0, last_ = 0;
  std::vector<Layer> layers_;
};

class Head {
 public:
  static absl::StatusOr<std::unique_ptr<Head>> Load(std::shared_ptr<const Model> model);
  // logits: n rows of n_vocab for n hidden rows of n_embd.
  void Logits(const float* hidden,
              int64_t n,
              float* logits,
              ThreadPool& pool,
              ForwardScratch& scratch) const;
  int n_vocab() const { return model_->hparams().n_vocab; }
  std::vector<kernels::Tensor> tensors() const { return {norm_, output_}; }

 private:
  std::shared_ptr<const Model> model_;
  kernels::Tensor norm_, output_;
};

}  // namespace strata::model
