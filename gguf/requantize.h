// Rewrites a GGUF model with its weight matrices in another dtype. Metadata and the tensors that
// are not matrices (norms, biases) are carried over unchanged; every matrix is expanded to f32 and
// quantized again, row by row, while the file is written (memory stays small). Typical use: a
// smaller or faster copy of a model as a draft for speculative decoding (`strata quantize`).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace strata::gguf {

struct RequantizeOptions {
  kernels::DType type = kernels::DType::kQ4_0;
  // Leave token_embd (and so a tied output head) as it is.
  bool keep_embeddings = false;
  // Keep only the first `layers` transformer blocks (0: all), with the embeddings, the final norm
  // and the head: the model that exits early after that many layers (self-speculation in a file
  // of its own, or a stand-in target whose compute is small next to its links).
  int layers = 0;
  // Called after each converted matrix is written: (matrices done, matrices to convert).
  std::function<void(int done, int total)> progress;
};

struct RequantizeReport {
  int converted = 0;  // matrices written in the new dtype
  int kept = 0;       // tensors copied unchanged
  int unfit = 0;      // of which matrices whose rows do not split into the dtype's blocks
  int dropped = 0;    // tensors of the layers left out
  uint64_t bytes_in = 0, bytes_out = 0;  // file sizes
};

// Reads `in` (any model this build loads), writes `out` (replaced; removed again on failure).
// NOT_FOUND / INVALID_ARGUMENT / DATA_LOSS for a missing or malformed input, INVALID_ARGUMENT when
// `in` and `out` are the same file, `type` is not a weight dtype or `layers` is not in [0, the
// model's layers], the writer's error for `out`.
absl::StatusOr<RequantizeReport> Requantize(const std::string& in,
                                            const std::string& out,
                                            const RequantizeOptions& options);

}  // namespace strata::gguf
