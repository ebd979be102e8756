#include "tests/testing/tiny_model.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "common/strings.h"
#include "gguf/writer.h"
#include "kernels/quant.h"
#include "text/byte_vocab.h"

namespace strata::testkit {
namespace {

using kernels::DType;

// A random matrix, quantized to `dtype`; stored as F32 (the quantized values, dequantized) when
// `as_f32`, so a model's F32 twin has exactly the same weights.
absl::Status AddMatrix(gguf::GgufWriter& w,
                       const std::string& name,
                       DType dtype,
                       int64_t rows,
                       int64_t cols,
                       float scale,
                       std::mt19937_64& rng,
                       bool as_f32 = false) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> row(cols);
  const size_t row_bytes = kernels::RowBytes(dtype, cols);
  std::vector<uint8_t> data(row_bytes * rows);
  std::vector<float> dequantized(as_f32 ? rows * cols : 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (float& x : row) x = dist(rng);
    kernels::QuantizeRowRef(dtype, row.data(), data.data() + r * row_bytes, cols);
    if (as_f32) {
      kernels::DequantizeRowRef(dtype, data.data() + r * row_bytes, &dequantized[r * cols], cols);
    }
  }
  if (as_f32) {
    return w.AddTensor(
        name, DType::kF32, {rows, cols}, dequantized.data(), dequantized.size() * sizeof(float));
  }
  return w.AddTensor(name, dtype, {rows, cols}, data.data(), data.size());
}

absl::Status AddVector(gguf::GgufWriter& w,
                       const std::string& name,
                       int64_t n,
                       float mean,
                       float spread,
                       std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(mean - spread, mean + spread);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return w.AddTensor(name, DType::kF32, {n}, v.data(), v.size() * sizeof(float));
}

}  // namespace

absl::Status WriteTinyModel(const TinyModelSpec& s, const std::string& path) {
  gguf::GgufWriter w;
  const std::string a = s.arch;
  w.SetString("general.architecture", a);
  w.SetString("general.name", "tiny-" + a);
  w.SetUint32(a + ".block_count", s.n_layer);
  w.SetUint32(a + ".context_length", s.n_ctx);
  w.SetUint32(a + ".embedding_length", s.n_embd);
  w.SetUint32(a + ".feed_forward_length", s.n_ff);
  w.SetUint32(a + ".attention.head_count", s.n_head);
  w.SetUint32(a + ".attention.head_count_kv", s.n_head_kv);
  w.SetFloat32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetFloat32(a + ".rope.freq_base", s.rope_base);
  w.SetUint32(a + ".vocab_size", kTinyVocab);

  text::SetByteLevelVocab(w, kTinyVocab);

  std::mt19937_64 rng(s.seed);
  const int64_t e = s.n_embd, hd = s.n_embd / s.n_head, q = hd * s.n_head, kv = hd * s.n_head_kv,
                ff = s.n_ff;
  RETURN_IF_ERROR(AddMatrix(w, "token_embd.weight", s.embd_type, kTinyVocab, e, 1.0f, rng));
  RETURN_IF_ERROR(AddVector(w, "output_norm.weight", e, 1.0f, 0.2f, rng));
  if (!s.tied_output) {
    RETURN_IF_ERROR(AddMatrix(w, "output.weight", s.output_type, kTinyVocab, e, 0.1f, rng));
  }
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(e));
  const float ff_scale = 1.0f / std::sqrt(static_cast<float>(ff));
  auto projection = [&](const std::string& name, int64_t rows, int64_t cols, float scale) {
    return AddMatrix(w, name, s.weight_type, rows, cols, scale, rng, s.dequantized_f32);
  };
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = StrCat("blk.", l, ".");
    RETURN_IF_ERROR(AddVector(w, p + "attn_norm.weight", e, 1.0f, 0.2f, rng));
    RETURN_IF_ERROR(projection(p + "attn_q.weight", q, e, in_scale));
    RETURN_IF_ERROR(projection(p + "attn_k.weight", kv, e, in_scale));
    RETURN_IF_ERROR(projection(p + "attn_v.weight", kv, e, in_scale));
    RETURN_IF_ERROR(projection(p + "attn_output.weight", e, q, in_scale));
    RETURN_IF_ERROR(AddVector(w, p + "ffn_norm.weight", e, 1.0f, 0.2f, rng));
    RETURN_IF_ERROR(projection(p + "ffn_gate.weight", ff, e, in_scale));
    RETURN_IF_ERROR(projection(p + "ffn_up.weight", ff, e, in_scale));
    RETURN_IF_ERROR(projection(p + "ffn_down.weight", e, ff, ff_scale));
    if (a == "qwen2") {
      RETURN_IF_ERROR(AddVector(w, p + "attn_q.bias", q, 0.0f, 0.1f, rng));
      RETURN_IF_ERROR(AddVector(w, p + "attn_k.bias", kv, 0.0f, 0.1f, rng));
      RETURN_IF_ERROR(AddVector(w, p + "attn_v.bias", kv, 0.0f, 0.1f, rng));
    }
  }
  return w.WriteFile(path);
}

std::string TempPath(const std::string& suffix) {
  // Every path handed out; the files are removed when the process exits.
  struct Issued {
    absl::Mutex mu;
    int counter ABSL_GUARDED_BY(mu) = 0;
    std::vector<std::string> paths ABSL_GUARDED_BY(mu);
  };
  static Issued* issued = [] {
    auto* v = new Issued();
    std::atexit([] {
      std::vector<std::string> paths;
      {
        absl::MutexLock lock(&issued->mu);
        paths = issued->paths;
      }
      for (const auto& p : paths) std::filesystem::remove(p);
    });
    return v;
  }();
  const char* tmp = std::getenv("TMPDIR");
  absl::MutexLock lock(&issued->mu);
  std::string path =
      StrCat(tmp ? tmp : "/tmp", "/strata-test-", ::getpid(), "-", issued->counter++, suffix);
  issued->paths.push_back(path);
  return path;
}

}  // namespace strata::testkit
