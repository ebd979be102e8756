#include "client/generate.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/status.h"

namespace strata::client {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string: that much
// must be held back while streaming, since the next token may complete a stop string.
size_t PendingStopPrefix(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& stop : stops) {
    for (size_t len = std::min(stop.size() - 1, text.size()); len > hold; --len) {
      if (text.substr(text.size() - len) == std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

absl::StatusOr<Generation> Generate(InferenceSession& session,
                                        const model::Tokenizer& tokenizer,
                                        std::span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                    const strata::TokenCallback& on_token) {
  RETURN_IF_ERROR(options.sampling.Validate());
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  Generation result;
  result.prompt_tokens = static_cast<int>(prompt.size());
  const model::Sampler sampler(options.sampling);
  model::StreamDecoder decoder(tokenizer);
  std::string visible;   // decoded text, stop strings not yet cut
  size_t emitted = 0;    // bytes of `visible` already passed to the callback

  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(std::span<const float> logits, session.Feed(prompt));
  result.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  absl::Time first_token_time;
  result.finish_reason = "length";
  for (int i = 0; i < options.max_tokens; ++i) {
    const int32_t token = sampler.Sample(logits, session.position(), session.tokens());
    if (i == 0) {
      first_token_time = absl::Now();
      result.ttft_ms = absl::ToDoubleMilliseconds(first_token_time - start);
    }
    if (options.stop_at_end_of_generation && tokenizer.IsEndOfGeneration(token)) {
      result.finish_reason = "stop";
      break;
    }
    result.tokens.push_back(token);
    visible += decoder.Push(token);
    bool stopped = false;
    for (const std::string& stop : options.stop) {
      size_t at = stop.empty() ? std::string::npos : visible.find(stop);
      if (at != std::string::npos) {
        visible.resize(at);
        stopped = true;
      }
    }
    const size_t ready = stopped ? visible.size()
                                 : visible.size() - PendingStopPrefix(visible, options.stop);
    std::string_view piece;
    if (ready > emitted) {
      piece = std::string_view(visible).substr(emitted, ready - emitted);
      emitted = ready;
    }
    if (on_token && !on_token(token, piece)) {
      result.finish_reason = "cancelled";
      break;
    }
    if (stopped) {
      result.finish_reason = "stop";
      break;
    }
    if (i + 1 == options.max_tokens) break;
    const int32_t next[1] = {token};
    ASSIGN_OR_RETURN(logits, session.Feed(next));
  }
  if (result.finish_reason != "stop" || emitted == visible.size()) {
    visible += decoder.Flush();
  }
  if (on_token && visible.size() > emitted && result.finish_reason != "cancelled") {
    on_token(-1, std::string_view(visible).substr(emitted));
  }
  result.text = visible;
  const int decoded = static_cast<int>(result.tokens.size()) - 1;
  if (decoded > 0) {
    const double seconds = absl::ToDoubleSeconds(absl::Now() - first_token_time);
    result.decode_tokens_per_s = seconds > 0 ? decoded / seconds : 0;
  }
  return result;
}

}  // namespace strata::client
