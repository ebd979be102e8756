#include "client/session.h"

#include <numeric>

#include "common/status.h"

namespace strata::client {

InferenceSession::InferenceSession(const model::Embedder* embedder,
                                   const model::Head* head,
                                   Chain* chain,
                                   ThreadPool* pool)
    : embedder_(embedder), head_(head), chain_(chain), pool_(pool) {}

absl::StatusOr<std::span<const float>> InferenceSession::Feed(std::span<const int32_t> tokens,
                                                              bool all_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to feed");
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int width = embedder_->n_embd();
  hidden_.resize(n * width);
  RETURN_IF_ERROR(embedder_->Embed(tokens, hidden_.data()));
  rows_.resize(n);
  const int32_t start = position();
  for (int64_t i = 0; i < n; ++i) rows_[i] = {static_cast<int32_t>(start + i), model::SeqBit(0)};
  std::vector<int32_t> out_rows;
  if (all_logits) {
    out_rows.resize(n);
    std::iota(out_rows.begin(), out_rows.end(), 0);
  } else {
    out_rows = {static_cast<int32_t>(n - 1)};
  }
  last_hidden_.resize(out_rows.size() * width);
  RETURN_IF_ERROR(chain_->Forward(rows_, hidden_.data(), out_rows, last_hidden_.data()));
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  logits_.resize(out_rows.size() * static_cast<size_t>(head_->n_vocab()));
  head_->Logits(
      last_hidden_.data(), static_cast<int64_t>(out_rows.size()), logits_.data(), *pool_, scratch_);
  return std::span<const float>(logits_).subspan(logits_.size() - head_->n_vocab());
}

absl::Status InferenceSession::Rewind(int32_t pos) {
  if (pos < 0 || pos > position()) return absl::InvalidArgumentError("rewind out of range");
  RETURN_IF_ERROR(chain_->Truncate(0, pos));
  tokens_.resize(pos);
  return absl::OkStatus();
}

}  // namespace strata::client
