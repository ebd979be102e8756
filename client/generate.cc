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

Emitter::Emitter(const text::Tokenizer& tokenizer,
                 const GenerateOptions& options,
                 const strata::TokenCallback& on_token,
                 Generation* out)
    : tokenizer_(tokenizer),
      options_(options),
      on_token_(on_token),
      out_(out),
      decoder_(tokenizer) {
  out_->finish_reason = "length";
}

void Emitter::MarkFirstToken() { first_token_time_ = absl::Now(); }

bool Emitter::Push(int32_t token) {
  if (done_) return false;
  if (out_->tokens.empty() && first_token_time_ == absl::Time()) MarkFirstToken();
  if (options_.stop_at_end_of_generation && tokenizer_.IsEndOfGeneration(token)) {
    out_->finish_reason = "stop";
    return !(done_ = true);
  }
  out_->tokens.push_back(token);
  visible_ += decoder_.Push(token);
  bool stopped = false;
  for (const std::string& stop : options_.stop) {
    size_t at = stop.empty() ? std::string::npos : visible_.find(stop);
    if (at != std::string::npos) {
      visible_.resize(at);
      stopped = true;
    }
  }
  const size_t ready =
      stopped ? visible_.size() : visible_.size() - PendingStopPrefix(visible_, options_.stop);
  std::string_view piece;
  if (ready > emitted_) {
    piece = std::string_view(visible_).substr(emitted_, ready - emitted_);
    emitted_ = ready;
  }
  if (on_token_ && !on_token_(token, piece)) {
    out_->finish_reason = "cancelled";
    return !(done_ = true);
  }
  if (stopped) {
    out_->finish_reason = "stop";
    return !(done_ = true);
  }
  if (static_cast<int>(out_->tokens.size()) >= options_.max_tokens) {
    out_->finish_reason = "length";
    return !(done_ = true);
  }
  return true;
}

void Emitter::Finish() {
  done_ = true;
  if (out_->finish_reason != "stop" || emitted_ == visible_.size()) visible_ += decoder_.Flush();
  if (on_token_ && visible_.size() > emitted_ && out_->finish_reason != "cancelled") {
    on_token_(-1, std::string_view(visible_).substr(emitted_));
  }
  out_->text = visible_;
  const int decoded = static_cast<int>(out_->tokens.size()) - 1;
  if (decoded > 0) {
    const double seconds = absl::ToDoubleSeconds(absl::Now() - first_token_time_);
    out_->decode_tokens_per_s = seconds > 0 ? decoded / seconds : 0;
  }
}

absl::StatusOr<Generation> Generate(InferenceSession& session,
                                    const text::Tokenizer& tokenizer,
                                    std::span<const int32_t> prompt,
                                    const GenerateOptions& options,
                                    const strata::TokenCallback& on_token) {
  RETURN_IF_ERROR(options.sampling.Validate());
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (options.max_tokens <= 0) return absl::InvalidArgumentError("max_tokens must be positive");
  Generation result;
  result.prompt_tokens = static_cast<int>(prompt.size());
  const model::Sampler sampler(options.sampling);
  Emitter emitter(tokenizer, options, on_token, &result);

  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(std::span<const float> logits, session.Feed(prompt));
  result.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  while (true) {
    const int32_t token = sampler.Sample(logits, session.position(), session.tokens());
    if (result.ttft_ms == 0) {
      result.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      emitter.MarkFirstToken();
    }
    if (!emitter.Push(token)) break;
    const int32_t next[1] = {token};
    ASSIGN_OR_RETURN(logits, session.Feed(next));
  }
  emitter.Finish();
  return result;
}

}  // namespace strata::client
