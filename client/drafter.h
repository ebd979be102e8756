// Drafters propose the tokens that speculative decoding then verifies across the chain. They run
// at the client: n-gram prompt lookup (no model), a small draft model with the target's
// vocabulary, the target's own first layers (self-speculation), and — for benchmarks only — an
// oracle that knows the target's output and is right with a set probability.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/local_chain.h"
#include "client/session.h"
#include "common/thread_pool.h"
#include "model/llama.h"

namespace strata::client {

struct DraftToken {
  int32_t token;
  float prob;  // the drafter's probability for it (1 for deterministic drafters)
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual std::string name() const = 0;
  // Up to `n` tokens continuing `text` along the drafter's best guess; fewer (or none) when it
  // has no guess.
  virtual std::vector<DraftToken> Draft(std::span<const int32_t> text, int n) = 0;
  // Up to `k` alternatives for the one token after `text`, best first (draft trees).
  virtual std::vector<DraftToken> Next(std::span<const int32_t> text, int k) = 0;
  // Catches up on `text` (a model drafter reads what it has not seen yet), so that the next
  // Draft about it costs only its drafts.
  virtual void Read(std::span<const int32_t> text) {}
  // What proposing one more token costs, in ms, measured when it was made (0: next to nothing).
  // Before speculation has seen the drafter at work, this tells whether drafting could pay at all.
  virtual double token_ms() const { return 0; }
  // What reading text costs per token, in ms, read in one batch as a prompt is (0: next to
  // nothing), and how many tokens of `text` it would read before drafting after it.
  virtual double read_ms() const { return 0; }
  virtual int Unread(std::span<const int32_t> text) const { return 0; }
};

// Prompt lookup: the longest suffix of the text (max_n down to min_n tokens) that occurred
// earlier proposes what followed it then.
class NgramDrafter final : public Drafter {
 public:
  explicit NgramDrafter(int max_n = 4, int min_n = 1) : max_n_(max_n), min_n_(min_n) {}
  std::string name() const override { return "ngram"; }
  std::vector<DraftToken> Draft(std::span<const int32_t> text, int n) override;
  std::vector<DraftToken> Next(std::span<const int32_t> text, int k) override;

 private:
  int max_n_, min_n_;
};

// A model run in this process: a small draft model sharing the target's vocabulary, or the first
// layers of the target itself followed by its head (self-speculation). Greedy drafts; its KV
// follows the text it is asked about (drafts included), so consecutive calls cost only the
// tokens that differ from the last call's text and drafts.
class ModelDrafter final : public Drafter {
 public:
  // `layers` = 0: the whole model at `path` (a draft model); > 0: only its first `layers`
  // layers, then its head (self-speculation on the target file).
  static absl::StatusOr<std::unique_ptr<ModelDrafter>> Load(const std::string& path,
                                                            int layers,
                                                            int target_vocab,
                                                            int threads);
  std::string name() const override { return name_; }
  std::vector<DraftToken> Draft(std::span<const int32_t> text, int n) override;
  std::vector<DraftToken> Next(std::span<const int32_t> text, int k) override;
  void Read(std::span<const int32_t> text) override { (void)Sync(text); }
  double token_ms() const override { return token_ms_; }
  double read_ms() const override { return read_ms_; }
  int Unread(std::span<const int32_t> text) const override {
    return static_cast<int>(text.size() - CommonPrefix(text));
  }

 private:
  ModelDrafter() = default;
  // How many tokens `text` shares, from its start, with what the session holds.
  size_t CommonPrefix(std::span<const int32_t> text) const;
  // Brings the session to exactly `text` and returns the logits after it.
  absl::StatusOr<std::span<const float>> Sync(std::span<const int32_t> text);

  std::string name_;
  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<model::Embedder> embedder_;
  std::unique_ptr<model::Head> head_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<InferenceSession> session_;
  std::vector<float> logits_;
  double token_ms_ = 0;
  double read_ms_ = 0;
};

// For benchmarks only: knows the target's continuation `truth` (prompt + the target's own
// greedy output) and proposes, independently for each position, the right token with
// probability `accuracy` and a wrong one otherwise — the i.i.d. acceptance model of the
// speculative-decoding literature, independent of the data.
class OracleDrafter final : public Drafter {
 public:
  OracleDrafter(std::vector<int32_t> truth, double accuracy, uint64_t seed, int vocab)
      : truth_(std::move(truth)), accuracy_(accuracy), seed_(seed), vocab_(vocab) {}
  std::string name() const override;
  std::vector<DraftToken> Draft(std::span<const int32_t> text, int n) override;
  std::vector<DraftToken> Next(std::span<const int32_t> text, int k) override;

 private:
  std::vector<int32_t> truth_;
  double accuracy_;
  uint64_t seed_;
  int vocab_;
};

// The drafter a --speculative value names (strata::ParseDrafter's spelling): "ngram",
// "draft:PATH", "self:K" (needs the target file `target_path`); "none" is refused, and so is
// "oracle:A" (benchmarks build it directly).
absl::StatusOr<std::unique_ptr<Drafter>> MakeDrafter(const std::string& spec,
                                                     const std::string& target_path,
                                                     int target_vocab,
                                                     int threads);

// Drafters kept between requests, so a client loads a draft model once, not once per request.
// A drafter keeps state (a model drafter's cache follows the text), so each lease is exclusive:
// concurrent requests naming the same drafter get instances of their own.
class DrafterCache {
 public:
  DrafterCache(std::string target_path, int target_vocab, int threads)
      : target_path_(std::move(target_path)), target_vocab_(target_vocab), threads_(threads) {}

  // What speculation learned about a drafter in earlier requests, per mode (opaque here: the
  // decoder's cost model; a tree's budget and a chain's gamma learn differently).
  using Learned = std::map<std::string, std::shared_ptr<void>>;
  // A drafter and what was learned about it, kept together.
  struct Entry {
    std::unique_ptr<Drafter> drafter;
    Learned learned;
  };

  class Lease {
   public:
    Lease(DrafterCache* cache, std::string spec, Entry entry)
        : cache_(cache), spec_(std::move(spec)), entry_(std::move(entry)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (entry_.drafter) cache_->Return(spec_, std::move(entry_));
    }
    Drafter* get() const { return entry_.drafter.get(); }
    std::shared_ptr<void>& learned(const std::string& mode) { return entry_.learned[mode]; }

   private:
    DrafterCache* cache_;
    std::string spec_;
    Entry entry_;
  };

  // An idle drafter for `spec` (a --speculative value), made with MakeDrafter when none is idle.
  absl::StatusOr<Lease> Take(const std::string& spec);
  // Idle drafters held for `spec`.
  size_t idle(const std::string& spec) const;

 private:
  void Return(const std::string& spec, Entry entry);

  const std::string target_path_;
  const int target_vocab_;
  const int threads_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::vector<Entry>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::client
