// The generation loop shared by local and swarm generation: sample, stream text, stop.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/session.h"
#include "model/sampling.h"
#include "strata/client.h"
#include "text/tokenizer.h"

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
  double ttft_ms = 0;  // first Feed of the prompt until the first token is sampled
  double prefill_ms = 0;
  double decode_tokens_per_s = 0;  // tokens after the first / time after the first
  std::string finish_reason;       // "stop", "length" or "cancelled"
};

// Turns sampled tokens into the Generation: streams text (holding back incomplete characters and
// possible stop strings), applies end-of-generation, stop strings, max_tokens and the callback.
// Shared by plain and speculative decoding so both end a generation the same way.
class Emitter {
 public:
  Emitter(const text::Tokenizer& tokenizer,
          const GenerateOptions& options,
          const strata::TokenCallback& on_token,
          Generation* out);
  // Takes the next sampled token; false when the generation is over (finish_reason is set).
  bool Push(int32_t token);
  // Flushes held-back text and fills text / decode speed. Call once at the end.
  void Finish();
  bool done() const { return done_; }
  void MarkFirstToken();

 private:
  const text::Tokenizer& tokenizer_;
  const GenerateOptions& options_;
  const strata::TokenCallback& on_token_;
  Generation* out_;
  text::StreamDecoder decoder_;
  std::string visible_;  // decoded text, stop strings not yet cut
  size_t emitted_ = 0;   // bytes of visible_ already passed to the callback
  bool done_ = false;
  absl::Time first_token_time_;
};

// Feeds `prompt` to the (fresh) session and generates. The session holds the text afterwards.
absl::StatusOr<Generation> Generate(InferenceSession& session,
                                    const text::Tokenizer& tokenizer,
                                    std::span<const int32_t> prompt,
                                    const GenerateOptions& options,
                                    const strata::TokenCallback& on_token = nullptr);

}  // namespace strata::client
