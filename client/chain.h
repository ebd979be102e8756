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
  virtual absl::Status Forward(std::span<const model::Row> rows, const float* hidden,
                               std::span<const int32_t> out_rows, float* out) = 0;

  // Drops positions >= from_pos of sequence `seq` on every hop.
  virtual absl::Status Truncate(model::SeqId seq, int32_t from_pos) = 0;

  // The hops of the chain, first to last.
  virtual std::vector<HopInfo> Hops() const = 0;
};

}  // namespace strata::client
