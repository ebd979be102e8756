// The layers between the client's embeddings and its head. A LocalChain runs them in this
// process; a route of remote nodes implements the same interface over the network.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/verify.h"

namespace strata::client {

// Which layers served a pass, for display (`route` in --json output).
struct HopInfo {
  std::string node_id;
  std::string address;
  int first_layer = 0;
  int last_layer = 0;
};

class Chain {
 public:
  virtual ~Chain() = default;

  // Runs `rows` (hidden: rows.size() x n_embd f32) through every layer, appending their KV.
  // Writes the final hidden states of the rows named in `out_rows` (indices into rows) to
  // `out`, out_rows.size() x n_embd.
  virtual absl::Status Forward(std::span<const model::Row> rows,
                               const float* hidden,
                               std::span<const int32_t> out_rows,
                               float* out) = 0;

  // Drops positions >= from_pos of sequence `seq` on every hop.
  virtual absl::Status Truncate(model::SeqId seq, int32_t from_pos) = 0;
  // Cells of `seq` below `until_pos` join sequence 0; every other sequence is dropped.
  virtual absl::Status Commit(model::SeqId seq, int32_t until_pos) = 0;

  // The hops of the chain, first to last.
  virtual std::vector<HopInfo> Hops() const = 0;

  // Runs in flight (speculative decoding). A run is a Forward that is waited for later; a remote
  // chain keeps several going at once, a local one runs each when it is submitted. Runs and other
  // ops take effect in submission order.
  virtual absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows,
                                             const float* hidden,
                                             std::span<const int32_t> out_rows) = 0;
  // Writes the run's out rows to `out`. ABORTED when the route changed meanwhile (the chain
  // then holds the committed text only), CANCELLED when the run was cancelled.
  virtual absl::Status WaitRun(uint64_t run, float* out) = 0;
  // Whether WaitRun(run) would return without waiting (answered, failed or cancelled). A local
  // chain computes a run when it is submitted: always ready.
  virtual bool RunReady(uint64_t run) { return true; }
  // Last-hop verification: a run whose last hop decides the tokens itself (model::VerifySpec:
  // one draft per out row, the sampler; out rows at consecutive positions, the first deciding
  // the position after it) and answers with them instead of hidden states.
  virtual absl::StatusOr<uint64_t> SubmitVerifiedRun(std::span<const model::Row> rows,
                                                     const float* hidden,
                                                     std::span<const int32_t> out_rows,
                                                     const model::VerifySpec& verify) = 0;
  // The tokens a verified run decided: the accepted drafts, then the target's own token. ABORTED
  // and CANCELLED as for WaitRun.
  virtual absl::Status WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) = 0;
  // Gives up on runs; each still answers WaitRun (CANCELLED, or its result if it finished).
  virtual void CancelRuns(std::span<const uint64_t> runs) = 0;
  // Like Truncate, but does not wait (ordered after the runs submitted before it).
  virtual void TruncateAsync(model::SeqId seq, int32_t from_pos) = 0;
  // Like Commit, but does not wait: the next run queued behind it saves a round trip.
  virtual void CommitAsync(model::SeqId seq, int32_t until_pos) = 0;
};

}  // namespace strata::client
