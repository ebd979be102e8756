// One request of speculative decoding by draft trees (SpeculativeOptions::Mode::kTree), on the
// first chain: each pass carries a tree of drafts grown best first up to a node budget, whose
// rows see the committed text and their ancestors only; the branch the target's tokens follow
// is committed and the rest of the tree dropped.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/chain.h"
#include "client/generate.h"
#include "client/speculative.h"
#include "model/kv_cache.h"

namespace strata::client {

class SpeculativeTree {
 public:
  // Generate's arguments, for `decoder`, whose first chain, drafter, head, options, stats and
  // cost model the request uses. All must outlive this.
  SpeculativeTree(SpeculativeDecoder* decoder,
                  std::span<const int32_t> prompt,
                  const GenerateOptions& options,
                  const strata::TokenCallback& on_token);

  // Generates the request's tokens. Call once.
  absl::StatusOr<Generation> Generate();

 private:
  // A node of a draft tree.
  struct Node {
    int32_t token;
    int parent;  // -1: child of the last settled token
    int depth;   // 1 for the token right after the settled text
    std::vector<int> children;
    model::SeqMask leaves = 0;
  };
  // The rows of a tree's pass, their tokens, and the rows whose logits are needed (indices into
  // rows: the last settled token's, then every node's).
  struct Pass {
    std::vector<model::Row> rows;
    std::vector<int32_t> tokens;
    std::vector<int32_t> out_rows;
  };

  // One pass: grows a tree, verifies it and settles the branch the target follows.
  absl::Status Step();
  // A tree of at most `budget` nodes (and kMaxSeqs - 1 leaves) beyond the text, grown best first
  // by the drafter's cumulative probability, SpeculativeOptions::tree_branch alternatives tried
  // per node.
  std::vector<Node> Grow(int budget) const;
  // Leaves get sequence ids 1..; every node is tagged with the leaves below it.
  static void TagLeaves(std::vector<Node>& nodes);
  // Rows: the settled tokens the chain does not hold yet, then the tree.
  Pass Rows(const std::vector<Node>& nodes) const;
  // Walks down the tree while the target's token is among the children, settling each token
  // (the last is the correction, or the bonus after a leaf). Returns the last node of the
  // accepted branch (-1: none) and sets `accepted` to its length.
  int Walk(const std::vector<Node>& nodes, int* accepted);
  // The node below `cur` (-1: below the settled text) whose token is `t`, or -1.
  static int NextOnBranch(const std::vector<Node>& nodes, int cur, int32_t t);

  SpeculativeDecoder& decoder_;
  Chain* const chain_;
  const int width_;  // floats per hidden state
  const int vocab_;
  Generation result_;
  Emitter emitter_;
  std::vector<int32_t> tokens_;  // the settled text: the prompt and the generated tokens
  int32_t fed_ = 0;              // positions the chain holds (all settled)
  const absl::Time start_;
  std::vector<float> hidden_;  // the rows of a pass
  std::vector<float> out_;     // its out rows
};

}  // namespace strata::client
