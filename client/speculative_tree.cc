#include "client/speculative_tree.h"

#include <algorithm>
#include <queue>

#include "absl/time/clock.h"
#include "common/status.h"

namespace strata::client {

SpeculativeTree::SpeculativeTree(SpeculativeDecoder* decoder,
                                 std::span<const int32_t> prompt,
                                 const GenerateOptions& options,
                                 const strata::TokenCallback& on_token)
    : decoder_(*decoder),
      chain_(decoder->chains_[0]),
      width_(decoder->embedder_->n_embd()),
      vocab_(decoder->head_->n_vocab()),
      emitter_(*decoder->tokenizer_, options, on_token, &result_),
      tokens_(prompt.begin(), prompt.end()),
      start_(absl::Now()) {
  result_.prompt_tokens = static_cast<int>(prompt.size());
}

absl::StatusOr<Generation> SpeculativeTree::Generate() {
  while (!emitter_.done()) RETURN_IF_ERROR(Step());
  emitter_.Finish();
  return std::move(result_);
}

absl::Status SpeculativeTree::Step() {
  const SpeculativeOptions& options = decoder_.options_;
  SpeculativeStats& stats = decoder_.stats_;
  GammaController& gamma_control = decoder_.gamma_control_;
  const int32_t certain = static_cast<int32_t>(tokens_.size());
  const int budget = options.adaptive ? std::min(options.tree_budget, 2 * gamma_control.NextGamma())
                                      : options.tree_budget;
  const absl::Time draft_start = absl::Now();
  std::vector<Node> nodes = Grow(budget);
  if (stats.passes > 0) {  // the first tree reads the whole prompt into a model drafter
    gamma_control.ObserveDraft(static_cast<int>(nodes.size()),
                               absl::ToDoubleMilliseconds(absl::Now() - draft_start));
  }
  TagLeaves(nodes);
  const Pass pass = Rows(nodes);
  const int32_t count = static_cast<int32_t>(pass.rows.size());
  hidden_.resize(static_cast<size_t>(count) * width_);
  RETURN_IF_ERROR(decoder_.embedder_->Embed(pass.tokens, hidden_.data()));
  const absl::Time sent = absl::Now();
  ASSIGN_OR_RETURN(uint64_t id, chain_->SubmitRun(pass.rows, hidden_.data(), pass.out_rows));
  out_.resize(pass.out_rows.size() * static_cast<size_t>(width_));
  absl::Status st = chain_->WaitRun(id, out_.data());
  if (st.code() == absl::StatusCode::kAborted) {
    // The chain failed over and holds the settled text it had answered; send the rest again.
    stats.wasted_rows += count;
    (void)chain_->Commit(1, 0);  // nothing but sequence 0 survives
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(st);
  if (result_.prefill_ms == 0) {
    result_.prefill_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
  }
  decoder_.Logits(out_, static_cast<int64_t>(pass.out_rows.size()));
  stats.passes++;
  stats.drafted += static_cast<int>(nodes.size());
  int accepted = 0;
  const int cur = Walk(nodes, &accepted);
  stats.accepted += accepted;
  stats.wasted_rows += static_cast<int>(nodes.size()) - accepted;
  // The accepted branch joins the committed text; the rest of the tree is dropped.
  model::SeqId leaf = 1;
  if (cur >= 0) leaf = __builtin_ctzll(nodes[cur].leaves);
  // Not waited for: the next pass queues behind it on every hop. Without a tree the pass held
  // the committed sequence alone: nothing to drop.
  if (!nodes.empty()) chain_->CommitAsync(leaf, certain + accepted);
  fed_ = certain + accepted;
  decoder_.Learn(count,
                 absl::ToDoubleMilliseconds(absl::Now() - sent),
                 static_cast<int>(nodes.size()),
                 accepted);
  return absl::OkStatus();
}

std::vector<SpeculativeTree::Node> SpeculativeTree::Grow(int budget) const {
  Drafter& drafter = *decoder_.drafter_;
  const int branch = decoder_.options_.tree_branch;
  std::vector<Node> nodes;
  struct Candidate {
    double score;
    int parent;
    int32_t token;
    bool operator<(const Candidate& o) const { return score < o.score; }
  };
  std::priority_queue<Candidate> frontier;
  if (budget > 0) {
    for (const DraftToken& d : drafter.Next(tokens_, branch)) frontier.push({d.prob, -1, d.token});
  }
  int leaves = 0;
  while (!frontier.empty() && static_cast<int>(nodes.size()) < budget) {
    Candidate c = frontier.top();
    frontier.pop();
    const bool parent_was_leaf = c.parent >= 0 && nodes[c.parent].children.empty();
    const int new_leaves = leaves + (parent_was_leaf ? 0 : 1);
    if (new_leaves > model::kMaxSeqs - 1) continue;
    leaves = new_leaves;
    nodes.push_back({c.token, c.parent, c.parent < 0 ? 1 : nodes[c.parent].depth + 1, {}, 0});
    const int id = static_cast<int>(nodes.size()) - 1;
    if (c.parent >= 0) nodes[c.parent].children.push_back(id);
    // Children scores carry this node's cumulative probability.
    std::vector<int32_t> path(tokens_.begin(), tokens_.end());
    std::vector<int32_t> rev;
    for (int n = id; n >= 0; n = nodes[n].parent) rev.push_back(nodes[n].token);
    path.insert(path.end(), rev.rbegin(), rev.rend());
    if (static_cast<int>(nodes.size()) < budget) {
      for (const DraftToken& d : drafter.Next(path, branch)) {
        frontier.push({c.score * d.prob, id, d.token});
      }
    }
  }
  return nodes;
}

void SpeculativeTree::TagLeaves(std::vector<Node>& nodes) {
  int next_seq = 1;
  for (int i = static_cast<int>(nodes.size()) - 1; i >= 0; --i) {
    if (nodes[i].children.empty()) nodes[i].leaves |= model::SeqBit(next_seq++);
    if (nodes[i].parent >= 0) nodes[nodes[i].parent].leaves |= nodes[i].leaves;
  }
}

SpeculativeTree::Pass SpeculativeTree::Rows(const std::vector<Node>& nodes) const {
  const int32_t certain = static_cast<int32_t>(tokens_.size());
  const int32_t settled_rows = certain - fed_;
  const int32_t count = settled_rows + static_cast<int32_t>(nodes.size());
  Pass pass;
  pass.rows.resize(count);
  pass.tokens.resize(count);
  for (int32_t i = 0; i < settled_rows; ++i) {
    pass.rows[i] = {fed_ + i, model::SeqBit(0)};
    pass.tokens[i] = tokens_[fed_ + i];
  }
  for (size_t n = 0; n < nodes.size(); ++n) {
    pass.rows[settled_rows + n] = {certain - 1 + nodes[n].depth, nodes[n].leaves, model::SeqBit(0)};
    pass.tokens[settled_rows + n] = nodes[n].token;
  }
  for (int32_t i = settled_rows - 1; i < count; ++i) pass.out_rows.push_back(i);
  return pass;
}

int SpeculativeTree::Walk(const std::vector<Node>& nodes, int* accepted) {
  int cur = -1;
  *accepted = 0;
  while (!emitter_.done()) {
    const size_t row = cur < 0 ? 0 : static_cast<size_t>(cur) + 1;  // index into out rows
    const int64_t position = static_cast<int64_t>(tokens_.size());
    const int32_t t = decoder_.sampler_->Sample(
        std::span<const float>(decoder_.logits_).subspan(row * vocab_, vocab_), position, tokens_);
    if (result_.ttft_ms == 0) {
      result_.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
      emitter_.MarkFirstToken();
    }
    tokens_.push_back(t);
    decoder_.stats_.emitted++;
    emitter_.Push(t);
    const int next = NextOnBranch(nodes, cur, t);
    if (next < 0) break;  // `t` is the correction (or the bonus after a leaf)
    cur = next;
    ++*accepted;
  }
  return cur;
}

int SpeculativeTree::NextOnBranch(const std::vector<Node>& nodes, int cur, int32_t t) {
  int next = -1;
  if (cur < 0) {
    for (size_t n = 0; n < nodes.size(); ++n) {
      if (nodes[n].parent < 0 && nodes[n].token == t) next = static_cast<int>(n);
    }
  } else {
    for (int k : nodes[cur].children) {
      if (nodes[k].token == t) next = k;
    }
  }
  return next;
}

}  // namespace strata::client
