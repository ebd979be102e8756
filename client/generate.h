// The generation loop shared by local and swarm generation: sample, stream text, stop.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "client/session.h"
#include "model/sampling.h"
#include "model/tokenizer.h"
#include "strata/client.h"

namespace strata::client {

struct GenerateOptions {
  int max_tokens = 128;
  model::SamplingParams sampling;
  std::vector<std::string> stop;  // generation ends before any of these strings
  bool stop_at_end_of_generation = true;
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (an end-of-generation token is not included)
  std::string text;
  int prompt_tokens = 0;
  double ttft_ms = 0;              // first Feed of the prompt until the first token is sampled
  double prefill_ms = 0;
  double decode_tokens_per_s = 0;  // tokens after the first / time after the first
  std::string finish_reason;       // "stop", "length" or "cancelled"
};

// Feeds `prompt` to the (fresh) session and generates. The session holds the text afterwards.
absl::StatusOr<Generation> Generate(InferenceSession& session,
                                        const model::Tokenizer& tokenizer,
                                        std::span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                    const strata::TokenCallback& on_token = nullptr);

}  // namespace strata::client
