// Hyper-parameters of a Llama-family model, read from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "gguf/reader.h"

namespace strata::model {

enum class Arch { kLlama, kQwen2 };

struct HParams {
  Arch arch = Arch::kLlama;
  std::string arch_name;   // general.architecture
  std::string model_name;  // general.name, for display
  int n_layer = 0;         // transformer blocks
  int n_embd = 0;          // hidden width
  int n_ff = 0;            // feed-forward width
  int n_head = 0;          // query heads
  int n_head_kv = 0;       // key/value heads (GQA when < n_head)
  int head_dim = 0;        // per-head width of Q/K/V
  int rot_dim = 0;         // rotated dims per head (rope.dimension_count)
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // linear RoPE scaling: 1 / factor
  bool rope_neox = false;        // qwen2 rotates (i, i + d/2) pairs; llama adjacent pairs
  bool qkv_bias = false;         // qwen2 has biases on Q, K, V
  int n_ctx_train = 0;           // context length the model was trained for
  int n_vocab = 0;
  bool tied_output = false;  // no output.weight: the head reuses token_embd

  int kv_dim() const { return n_head_kv * head_dim; }
  int q_dim() const { return n_head * head_dim; }

  // Reads and validates every value; INVALID_ARGUMENT naming the key when a value is missing,
  // of the wrong type, or inconsistent (e.g. heads not dividing the width).
  static absl::StatusOr<HParams> FromGguf(const gguf::GgufFile& file);
};

}  // namespace strata::model
