// strata-random-model: writes a Llama-shaped GGUF of random weights, streaming (GgufWriter::
// AddTensorGenerated), for benchmarks: e.g. the 7B shapes (32 layers, 4096 hidden, 11008 FFN, 32
// heads, 32 KV heads, vocabulary 32000) in Q4_0 (~3.8 GB) or F16 (~13 GB), or fewer layers.
//
//   strata-random-model --out /tmp/llama7b-q4_0-4l.gguf --preset llama7b --type q4_0 --layers 4
//
// Weights are valid blocks of random codes with small scales (no quantizer runs, so writing is
// I/O-bound); the token embedding is tied to the head. The tokenizer is a byte-level stand-in
// (no merges): generation runs end to end, but the model is not meant to produce sensible text.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/strings.h"
#include "gguf/writer.h"
#include "kernels/quant.h"
#include "text/byte_vocab.h"

namespace {

using strata::StrCat;
using strata::kernels::DType;

struct Shape {
  int layers = 32, n_embd = 4096, n_ff = 11008, n_head = 32, n_head_kv = 32, vocab = 32000;
  int n_ctx = 4096;
};

// A small fast generator (SplitMix64): every row is a pure function of (seed, tensor, row).
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void RandomBytes(uint64_t state, uint8_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = Mix(state++);
    std::memcpy(dst + i, &v, 8);
  }
  const uint64_t v = Mix(state);
  std::memcpy(dst + i, &v, n - i);
}

// Fills one row of `cols` values in `dtype`: random codes, then sane scales in every block.
void FillRow(DType dtype, int64_t cols, uint64_t state, uint8_t* dst, float scale) {
  const size_t bytes = strata::kernels::RowBytes(dtype, cols);
  const uint16_t d = strata::kernels::Fp32ToFp16(scale);
  const uint16_t small = strata::kernels::Fp32ToFp16(-8.0f * scale);
  switch (dtype) {
    case DType::kF32: {
      auto* f = reinterpret_cast<float*>(dst);
      for (int64_t i = 0; i < cols; ++i) {
        f[i] = (static_cast<float>(Mix(state + i) >> 40) / 16777216.0f - 0.5f) * scale * 8;
      }
      return;
    }
    case DType::kF16:
    case DType::kBF16: {
      // Random halves in [-scale * 4, scale * 4): a table of 256 values indexed by random bytes.
      uint16_t table[256];
      for (int v = 0; v < 256; ++v) {
        const float f = (static_cast<float>(v) / 256.0f - 0.5f) * scale * 8;
        table[v] =
            dtype == DType::kF16 ? strata::kernels::Fp32ToFp16(f) : strata::kernels::Fp32ToBf16(f);
      }
      RandomBytes(state, dst, static_cast<size_t>(cols));
      auto* h = reinterpret_cast<uint16_t*>(dst);
      for (int64_t i = cols - 1; i >= 0; --i) h[i] = table[dst[i]];
      return;
    }
    default:
      break;
  }
  RandomBytes(state, dst, bytes);
  const strata::kernels::DTypeInfo& info = strata::kernels::Info(dtype);
  for (int64_t b = 0; b < cols / info.block_size; ++b) {
    uint8_t* blk = dst + b * info.block_bytes;
    switch (dtype) {
      case DType::kQ4_0:
      case DType::kQ8_0:
        std::memcpy(blk, &d, 2);
        break;
      case DType::kQ4_1:
        std::memcpy(blk, &d, 2);
        std::memcpy(blk + 2, &small, 2);
        break;
      case DType::kQ4_K: {
        const uint16_t dd = strata::kernels::Fp32ToFp16(scale / 32.0f);
        std::memcpy(blk, &dd, 2);
        std::memcpy(blk + 2, &dd, 2);
        break;
      }
      case DType::kQ6_K: {
        const uint16_t dd = strata::kernels::Fp32ToFp16(scale / 64.0f);
        std::memcpy(blk + 208, &dd, 2);
        break;
      }
      default:
        break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a Llama-shaped GGUF of random weights"};
  std::string out, type = "q4_0", preset = "llama7b";
  Shape s;
  int layers = -1;
  uint64_t seed = 1;
  app.add_option("--out", out, "Output .gguf path")->required();
  app.add_option("--type", type, "Weight type: f32 f16 bf16 q4_0 q4_1 q8_0 q4_K q6_K")
      ->capture_default_str();
  app.add_option("--preset",
                 preset,
                 "llama7b (32x4096, ffn 11008, 32/32 heads, vocab 32000) or "
                 "smollm2 (30x576, ffn 1536, 9/3 heads, vocab 49152)")
      ->capture_default_str();
  app.add_option("--layers", layers, "Transformer blocks (default: the preset's)");
  app.add_option("--n-embd", s.n_embd, "Override the hidden width");
  app.add_option("--n-ff", s.n_ff, "Override the FFN width");
  app.add_option("--heads", s.n_head, "Override the query heads");
  app.add_option("--kv-heads", s.n_head_kv, "Override the key/value heads");
  app.add_option("--vocab", s.vocab, "Override the vocabulary size");
  app.add_option("--seed", seed, "Random seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  Shape base;
  if (preset == "smollm2") {
    base = {30, 576, 1536, 9, 3, 49152, 8192};
  } else if (preset != "llama7b") {
    std::fprintf(stderr, "unknown preset '%s' (llama7b, smollm2)\n", preset.c_str());
    return 2;
  }
  // Explicit flags override the preset.
  if (app.count("--n-embd") == 0) s.n_embd = base.n_embd;
  if (app.count("--n-ff") == 0) s.n_ff = base.n_ff;
  if (app.count("--heads") == 0) s.n_head = base.n_head;
  if (app.count("--kv-heads") == 0) s.n_head_kv = base.n_head_kv;
  if (app.count("--vocab") == 0) s.vocab = base.vocab;
  s.n_ctx = base.n_ctx;
  s.layers = layers > 0 ? layers : base.layers;
  auto dtype = strata::kernels::WeightDTypeFromName(type);
  if (!dtype.ok()) {
    std::fprintf(stderr, "%s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  const int block = strata::kernels::Info(*dtype).block_size;
  if (s.n_embd % block != 0 || s.n_ff % block != 0 || s.n_embd % s.n_head != 0 ||
      s.n_head % s.n_head_kv != 0) {
    std::fprintf(stderr, "shape does not suit %s blocks or the head counts\n", type.c_str());
    return 2;
  }

  strata::gguf::GgufWriter w;
  const std::string a = "llama";
  w.SetString("general.architecture", a);
  w.SetString("general.name", StrCat("random-", preset, "-", type));
  w.SetUint32(a + ".block_count", s.layers);
  w.SetUint32(a + ".context_length", s.n_ctx);
  w.SetUint32(a + ".embedding_length", s.n_embd);
  w.SetUint32(a + ".feed_forward_length", s.n_ff);
  w.SetUint32(a + ".attention.head_count", s.n_head);
  w.SetUint32(a + ".attention.head_count_kv", s.n_head_kv);
  w.SetFloat32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetFloat32(a + ".rope.freq_base", 10000.0f);
  w.SetUint32(a + ".vocab_size", s.vocab);
  strata::text::SetByteLevelVocab(w, s.vocab);

  const int64_t e = s.n_embd, hd = e / s.n_head, q = hd * s.n_head, kv = hd * s.n_head_kv,
                ff = s.n_ff;
  uint64_t tensor_id = 0;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, float scale) {
    const uint64_t base_state = Mix(seed * 1000003 + ++tensor_id) << 20;
    return w.AddTensorGenerated(
        name, *dtype, {rows, cols}, [=, t = *dtype](int64_t row, uint8_t* dst) {
          FillRow(t, cols, base_state + static_cast<uint64_t>(row) * 4096, dst, scale);
        });
  };
  auto vector = [&](const std::string& name, int64_t n) {
    return w.AddTensorGenerated(name, DType::kF32, {n}, [=](int64_t, uint8_t* dst) {
      auto* f = reinterpret_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) f[i] = 1.0f;
    });
  };
  absl::Status st = matrix("token_embd.weight", s.vocab, e, 0.02f);
  if (st.ok()) st = vector("output_norm.weight", e);
  for (int l = 0; l < s.layers && st.ok(); ++l) {
    const std::string p = StrCat("blk.", l, ".");
    const float in = 0.5f / static_cast<float>(e), down = 0.5f / static_cast<float>(ff);
    for (auto r : {vector(p + "attn_norm.weight", e),
                   matrix(p + "attn_q.weight", q, e, in),
                   matrix(p + "attn_k.weight", kv, e, in),
                   matrix(p + "attn_v.weight", kv, e, in),
                   matrix(p + "attn_output.weight", e, q, in),
                   vector(p + "ffn_norm.weight", e),
                   matrix(p + "ffn_gate.weight", ff, e, in),
                   matrix(p + "ffn_up.weight", ff, e, in),
                   matrix(p + "ffn_down.weight", e, ff, down)}) {
      if (st.ok()) st = r;
    }
  }
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr,
               "writing %s: %d layers, %s, %.2f GB\n",
               out.c_str(),
               s.layers,
               type.c_str(),
               w.FileSize() / 1e9);
  st = w.WriteFile(out);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "wrote %.2f GB in %.1f s\n", w.FileSize() / 1e9, secs);
  return 0;
}
