// Builds small seeded random Llama-family models as GGUF files for tests: nothing downloaded,
// fast, deterministic. Weights can be any supported dtype; the vocabulary is GPT-2's 256 byte
// tokens plus <|im_start|> and <|im_end|>, so the tokenizer loads too.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace strata::testkit {

struct TinyModelSpec {
  std::string arch = "llama";  // or "qwen2" (biases on Q/K/V, NeoX RoPE)
  int n_layer = 4;
  int n_embd = 64;  // K-quant weights need multiples of 256
  int n_ff = 128;
  int n_head = 4;
  int n_head_kv = 2;
  int n_ctx = 512;
  float rope_base = 10000.0f;
  kernels::DType weight_type = kernels::DType::kQ4_1;  // projection matrices
  kernels::DType embd_type = kernels::DType::kQ8_0;    // token embeddings (and tied head)
  bool tied_output = true;
  kernels::DType output_type = kernels::DType::kQ6_K;  // when not tied
  uint64_t seed = 1;
  // Projection matrices quantized to weight_type, then stored dequantized as F32: the same
  // weights computed without quantized arithmetic (no activation quantization either).
  bool dequantized_f32 = false;
};

// Number of tokens in the tiny vocabulary.
constexpr int kTinyVocab = 258;

// Writes the model to `path`.
absl::Status WriteTinyModel(const TinyModelSpec& spec, const std::string& path);

// A fresh temporary file path under $TMPDIR with the given suffix; removed at process exit.
std::string TempPath(const std::string& suffix);

}  // namespace strata::testkit
