#include "client/drafter.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/time/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "model/sampling.h"
#include "strata/client.h"

namespace strata::client {
namespace {

// Start of the latest earlier occurrence of the last `n` tokens of `text`, or -1.
int64_t LatestMatch(std::span<const int32_t> text, int n) {
  const int64_t len = static_cast<int64_t>(text.size());
  if (len <= n) return -1;
  const auto tail = text.subspan(len - n);
  for (int64_t i = len - n - 1; i >= 0; --i) {
    if (std::equal(tail.begin(), tail.end(), text.begin() + i)) return i;
  }
  return -1;
}

std::vector<DraftToken> TopK(std::span<const float> logits, int k) {
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  k = std::min<int>(k, static_cast<int>(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  const float top = logits[ids[0]];
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - top));
  std::vector<DraftToken> out;
  for (int i = 0; i < k; ++i) {
    out.push_back(
        {ids[i], static_cast<float>(std::exp(static_cast<double>(logits[ids[i]] - top)) / sum)});
  }
  return out;
}

}  // namespace

std::vector<DraftToken> NgramDrafter::Draft(std::span<const int32_t> text, int n) {
  for (int len = max_n_; len >= min_n_; --len) {
    const int64_t at = LatestMatch(text, len);
    if (at < 0) continue;
    std::vector<DraftToken> out;
    for (int64_t i = at + len; i < static_cast<int64_t>(text.size()) && out.size() < size_t(n);
         ++i) {
      out.push_back({text[i], 1.0f});
    }
    if (!out.empty()) return out;
  }
  return {};
}

std::vector<DraftToken> NgramDrafter::Next(std::span<const int32_t> text, int k) {
  const int64_t len = static_cast<int64_t>(text.size());
  for (int n = max_n_; n >= min_n_; --n) {
    if (len <= n) continue;
    std::map<int32_t, int> counts;
    const auto tail = text.subspan(len - n);
    for (int64_t i = len - n - 1; i >= 0; --i) {
      if (std::equal(tail.begin(), tail.end(), text.begin() + i)) counts[text[i + n]]++;
    }
    if (counts.empty()) continue;
    int total = 0;
    std::vector<DraftToken> out;
    for (auto [t, c] : counts) {
      out.push_back({t, static_cast<float>(c)});
      total += c;
    }
    std::sort(out.begin(), out.end(), [](const DraftToken& a, const DraftToken& b) {
      return a.prob != b.prob ? a.prob > b.prob : a.token < b.token;
    });
    if (static_cast<int>(out.size()) > k) out.resize(k);
    for (DraftToken& d : out) d.prob /= static_cast<float>(total);
    return out;
  }
  return {};
}

absl::StatusOr<std::unique_ptr<ModelDrafter>> ModelDrafter::Load(const std::string& path,
                                                                 int layers,
                                                                 int target_vocab,
                                                                 int threads) {
  auto d = std::unique_ptr<ModelDrafter>(new ModelDrafter());
  ASSIGN_OR_RETURN(d->model_, model::Model::Open(path));
  const model::HParams& hp = d->model_->hparams();
  if (hp.n_vocab != target_vocab) {
    return absl::InvalidArgumentError(StrCat("the draft model ",
                                             path,
                                             " has ",
                                             hp.n_vocab,
                                             " tokens, the target ",
                                             target_vocab,
                                             ": they must share the vocabulary"));
  }
  if (layers < 0 || layers > hp.n_layer) {
    return absl::InvalidArgumentError(
        StrCat("self:", layers, " needs 1 to ", hp.n_layer, " layers"));
  }
  const int used = layers == 0 ? hp.n_layer : layers;
  d->name_ = layers == 0 ? StrCat("draft:", path) : StrCat("self:", layers);
  ASSIGN_OR_RETURN(d->embedder_, model::Embedder::Load(d->model_));
  ASSIGN_OR_RETURN(d->head_, model::Head::Load(d->model_));
  d->pool_ = std::make_unique<ThreadPool>(threads > 0 ? threads : ThreadPool::DefaultThreads());
  ASSIGN_OR_RETURN(
      auto chain,
      LocalChain::Create(
          d->model_, d->pool_.get(), size_t{512} << 20, {0, used}, /*allow_partial=*/true));
  d->session_ = std::make_unique<InferenceSession>(
      d->embedder_.get(), d->head_.get(), std::move(chain), d->pool_.get());
  // A draft's cost: the median of a few one-token steps (the first warms the caches). The next
  // text the drafter is asked about replaces this one.
  std::vector<int32_t> text = {0};
  std::vector<double> steps;
  for (int i = 0; i < 6; ++i) {
    const absl::Time start = absl::Now();
    if (d->Draft(text, 1).empty()) break;
    steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    text.push_back(static_cast<int32_t>((i + 1) % hp.n_vocab));
  }
  if (steps.size() > 1) {
    std::sort(steps.begin() + 1, steps.end());
    d->token_ms_ = steps[1 + (steps.size() - 1) / 2];
  }
  // And what reading costs per token: a batch of 32, as a prompt is read.
  std::vector<int32_t> batch(32);
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i] = static_cast<int32_t>((7 * i + 3) % hp.n_vocab);
  }
  const absl::Time start = absl::Now();
  if (d->Sync(batch).ok()) {
    d->read_ms_ = absl::ToDoubleMilliseconds(absl::Now() - start) / batch.size();
  }
  return d;
}

size_t ModelDrafter::CommonPrefix(std::span<const int32_t> text) const {
  const std::vector<int32_t>& have = session_->tokens();
  size_t common = 0;
  while (common < have.size() && common < text.size() && have[common] == text[common]) ++common;
  return common;
}

absl::StatusOr<std::span<const float>> ModelDrafter::Sync(std::span<const int32_t> text) {
  const std::vector<int32_t>& have = session_->tokens();
  size_t common = CommonPrefix(text);
  // Keep one token to re-feed so there are logits to return.
  if (common == text.size() && common > 0) --common;
  if (common < have.size()) RETURN_IF_ERROR(session_->Rewind(static_cast<int32_t>(common)));
  if (text.size() == common) return absl::InvalidArgumentError("empty text");
  ASSIGN_OR_RETURN(auto logits, session_->Feed(text.subspan(common)));
  logits_.assign(logits.begin(), logits.end());
  return std::span<const float>(logits_);
}

std::vector<DraftToken> ModelDrafter::Draft(std::span<const int32_t> text, int n) {
  std::vector<DraftToken> out;
  auto logits = Sync(text);
  if (!logits.ok()) return out;
  // The drafts stay in the cache: the next call's text starts with the accepted ones, which Sync
  // keeps, and drops the rest.
  for (int i = 0; i < n; ++i) {
    auto best = TopK(*logits, 1);
    out.push_back(best[0]);
    if (i + 1 == n) break;
    const int32_t t[1] = {best[0].token};
    logits = session_->Feed(t);
    if (!logits.ok()) break;
  }
  return out;
}

std::vector<DraftToken> ModelDrafter::Next(std::span<const int32_t> text, int k) {
  auto logits = Sync(text);
  if (!logits.ok()) return {};
  return TopK(*logits, k);
}

std::string OracleDrafter::name() const { return StrCat("oracle:", accuracy_); }

std::vector<DraftToken> OracleDrafter::Draft(std::span<const int32_t> text, int n) {
  std::vector<DraftToken> out;
  for (int i = 0; i < n; ++i) {
    const size_t pos = text.size() + i;
    if (pos >= truth_.size()) break;
    const bool right = model::PositionUniform(seed_, static_cast<int64_t>(pos)) < accuracy_;
    out.push_back({right ? truth_[pos] : (truth_[pos] + 1) % vocab_, 1.0f});
  }
  return out;
}

std::vector<DraftToken> OracleDrafter::Next(std::span<const int32_t> text, int k) {
  return Draft(text, 1);
}

absl::StatusOr<std::unique_ptr<Drafter>> MakeDrafter(const std::string& spec,
                                                     const std::string& target_path,
                                                     int target_vocab,
                                                     int threads) {
  ASSIGN_OR_RETURN(const strata::Drafter drafter, strata::ParseDrafter(spec));
  switch (drafter.kind) {
    case strata::Drafter::Kind::kNone:
      break;
    case strata::Drafter::Kind::kNgram:
      return std::unique_ptr<Drafter>(new NgramDrafter());
    case strata::Drafter::Kind::kModel: {
      ASSIGN_OR_RETURN(auto d, ModelDrafter::Load(drafter.path, 0, target_vocab, threads));
      return std::unique_ptr<Drafter>(std::move(d));
    }
    case strata::Drafter::Kind::kSelf: {
      if (target_path.empty()) {
        return absl::InvalidArgumentError("self:K needs the target model file at the client");
      }
      ASSIGN_OR_RETURN(auto d,
                       ModelDrafter::Load(target_path, drafter.layers, target_vocab, threads));
      return std::unique_ptr<Drafter>(std::move(d));
    }
  }
  return absl::InvalidArgumentError("no drafter to make: the request drafts nothing");
}

absl::StatusOr<DrafterCache::Lease> DrafterCache::Take(const std::string& spec) {
  {
    absl::MutexLock lock(&mu_);
    auto it = idle_.find(spec);
    if (it != idle_.end() && !it->second.empty()) {
      Entry e = std::move(it->second.back());
      it->second.pop_back();
      return Lease(this, spec, std::move(e));
    }
  }
  // Loading a model takes a while: not under the lock.
  Entry e;
  ASSIGN_OR_RETURN(e.drafter, MakeDrafter(spec, target_path_, target_vocab_, threads_));
  return Lease(this, spec, std::move(e));
}

size_t DrafterCache::idle(const std::string& spec) const {
  absl::MutexLock lock(&mu_);
  auto it = idle_.find(spec);
  return it == idle_.end() ? 0 : it->second.size();
}

void DrafterCache::Return(const std::string& spec, Entry entry) {
  absl::MutexLock lock(&mu_);
  idle_[spec].push_back(std::move(entry));
}

}  // namespace strata::client
