#include "tests/testing/model_runner.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace strata::testkit {
namespace {

constexpr size_t kKvBytes = size_t{256} << 20;

template <typename T>
T Unwrap(absl::StatusOr<T> v) {
  if (!v.ok()) {
    ADD_FAILURE() << v.status();
    std::abort();
  }
  return std::move(*v);
}

}  // namespace

ModelRunner::ModelRunner(const std::string& path, int threads) {
  model_ = Unwrap(model::Model::Open(path));
  embedder_ = Unwrap(model::Embedder::Load(model_));
  head_ = Unwrap(model::Head::Load(model_));
  full_ = Unwrap(model::LayerSpan::Load(model_, 0, model_->hparams().n_layer));
  pool_ = std::make_unique<ThreadPool>(threads);
}

std::vector<float> ModelRunner::Embed(std::span<const int32_t> tokens) const {
  std::vector<float> h(tokens.size() * model_->hparams().n_embd);
  EXPECT_TRUE(embedder_->Embed(tokens, h.data()).ok());
  return h;
}

std::vector<float> ModelRunner::Logits(const std::vector<float>& hidden) {
  const int64_t rows = static_cast<int64_t>(hidden.size() / model_->hparams().n_embd);
  std::vector<float> logits(rows * n_vocab());
  head_->Logits(hidden.data(), rows, logits.data(), *pool_, scratch_);
  return logits;
}

std::vector<float> ModelRunner::OneBatch(std::span<const int32_t> tokens) {
  return Split(tokens, {0, n_layer()});
}

std::vector<float> ModelRunner::Split(std::span<const int32_t> tokens,
                                      const std::vector<int>& boundaries) {
  std::vector<float> hidden = Embed(tokens);
  std::vector<model::Row> rows(tokens.size());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = {static_cast<int32_t>(i), 1};
  for (size_t b = 0; b + 1 < boundaries.size(); ++b) {
    auto span = Unwrap(model::LayerSpan::Load(model_, boundaries[b], boundaries[b + 1]));
    model::KvPool kv_pool(kKvBytes);
    model::KvCache cache(&kv_pool, span->kv_layout());
    absl::Status st = span->Forward(rows, hidden.data(), cache, *pool_, scratch_);
    EXPECT_TRUE(st.ok()) << st;
  }
  return Logits(hidden);
}

std::vector<float> ModelRunner::TokenByToken(std::span<const int32_t> tokens) {
  model::KvPool kv_pool(kKvBytes);
  model::KvCache cache(&kv_pool, full_->kv_layout());
  std::vector<float> all;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<float> h = Embed(tokens.subspan(i, 1));
    model::Row row{static_cast<int32_t>(i), 1};
    absl::Status st = full_->Forward({&row, 1}, h.data(), cache, *pool_, scratch_);
    EXPECT_TRUE(st.ok()) << st;
    std::vector<float> l = Logits(h);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

std::vector<float> ModelRunner::InterleavedWith(std::span<const int32_t> tokens,
                                                std::span<const int32_t> other) {
  model::KvPool kv_pool(kKvBytes);
  model::KvCache cache(&kv_pool, full_->kv_layout());
  // Batch: t0, o0, t1, o1, ... (other may be shorter or longer).
  std::vector<int32_t> ids;
  std::vector<model::Row> rows;
  std::vector<size_t> mine;
  for (size_t i = 0; i < std::max(tokens.size(), other.size()); ++i) {
    if (i < tokens.size()) {
      mine.push_back(rows.size());
      ids.push_back(tokens[i]);
      rows.push_back({static_cast<int32_t>(i), model::SeqBit(0)});
    }
    if (i < other.size()) {
      ids.push_back(other[i]);
      rows.push_back({static_cast<int32_t>(i), model::SeqBit(1)});
    }
  }
  std::vector<float> hidden = Embed(ids);
  absl::Status st = full_->Forward(rows, hidden.data(), cache, *pool_, scratch_);
  EXPECT_TRUE(st.ok()) << st;
  const int e = model_->hparams().n_embd;
  std::vector<float> picked;
  for (size_t r : mine)
    picked.insert(picked.end(), hidden.begin() + r * e, hidden.begin() + (r + 1) * e);
  return Logits(picked);
}

std::vector<float> ModelRunner::CrossSession(std::span<const int32_t> tokens,
                                             std::span<const int32_t> other,
                                             int chunk) {
  model::KvPool kv_pool(kKvBytes);
  model::KvCache a(&kv_pool, full_->kv_layout()), b(&kv_pool, full_->kv_layout());
  const int e = model_->hparams().n_embd;
  std::vector<float> picked;
  for (size_t start = 0; start < std::max(tokens.size(), other.size()); start += chunk) {
    auto take = [&](std::span<const int32_t> t) {
      return start >= t.size() ? std::span<const int32_t>()
                               : t.subspan(start, std::min<size_t>(chunk, t.size() - start));
    };
    auto ta = take(tokens), tb = take(other);
    std::vector<int32_t> ids(ta.begin(), ta.end());
    ids.insert(ids.end(), tb.begin(), tb.end());
    std::vector<model::Row> ra, rb;
    for (size_t i = 0; i < ta.size(); ++i) ra.push_back({static_cast<int32_t>(start + i), 1});
    for (size_t i = 0; i < tb.size(); ++i) rb.push_back({static_cast<int32_t>(start + i), 1});
    // The other session goes first so that our rows sit at a different offset in the batch.
    std::vector<float> hidden = Embed(std::vector<int32_t>(tb.begin(), tb.end()));
    std::vector<float> mine = Embed(ta);
    hidden.insert(hidden.end(), mine.begin(), mine.end());
    const model::LayerSpan::Part parts[2] = {{&b, rb}, {&a, ra}};
    absl::Status st = full_->ForwardBatch(parts, hidden.data(), *pool_, scratch_);
    EXPECT_TRUE(st.ok()) << st;
    picked.insert(picked.end(), hidden.begin() + tb.size() * e, hidden.end());
  }
  return Logits(picked);
}

}  // namespace strata::testkit
