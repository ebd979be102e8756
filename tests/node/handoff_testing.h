// In-process routes for hand-off tests: nodes serving consecutive spans of the default model in
// this process, and greedy decoding over them through the client's RemoteChain.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "client/local_model.h"
#include "client/remote_chain.h"
#include "client/session.h"
#include "model/sampling.h"
#include "node/node_server.h"
#include "tests/testing/paths.h"

namespace strata::testkit {

// The client side (tokenizer, embeddings, head), loaded once per test program.
inline client::LocalModel* SharedClientModel() {
  static client::LocalModel* model = [] {
    client::LocalModelOptions o;
    o.path = DefaultModelPath();
    o.threads = 1;
    o.kv_bytes = size_t{64} << 20;
    auto m = client::LocalModel::Load(o);
    return m.ok() ? m->release() : nullptr;
  }();
  return model;
}

// Starts a node serving [first, last) of the default model with `base`'s other settings.
inline std::unique_ptr<node::NodeServer> StartSpanNode(node::NodeOptions base,
                                                       int first,
                                                       int last) {
  base.model_path = DefaultModelPath();
  base.auto_span = false;
  base.first_layer = first;
  base.last_layer = last;
  base.threads = base.threads > 0 ? base.threads : 1;
  base.worker.kv_bytes = size_t{64} << 20;
  auto node = node::NodeServer::Start(base);
  EXPECT_TRUE(node.ok()) << node.status();
  return node.ok() ? *std::move(node) : nullptr;
}

// A client chain over the route `nodes` (in layer order), without a coordinator.
inline absl::StatusOr<std::unique_ptr<client::RemoteChain>> OpenRouteChain(
    const std::vector<node::NodeServer*>& nodes) {
  client::LocalModel* local = SharedClientModel();
  if (local == nullptr) return absl::FailedPreconditionError("cannot load the default model");
  client::RemoteChainOptions o;
  o.model_id = local->model().id();
  o.hidden_size = local->model().hparams().n_embd;
  o.max_length = 256;
  o.routes = [nodes, n = local->model().hparams().n_layer](
                 int start, const std::vector<std::string>&) -> absl::StatusOr<v1::RouteResponse> {
    v1::RouteResponse r;
    r.set_num_layers(n);
    for (node::NodeServer* node : nodes) {
      if (node->last_layer() <= start) continue;
      v1::Hop* hop = r.mutable_route()->add_hops();
      hop->set_node_id(node->node_id());
      hop->set_address(node->address());
      hop->set_first_layer(std::max(start, node->first_layer()));
      hop->set_last_layer(node->last_layer());
    }
    return r;
  };
  return client::RemoteChain::Open(o);
}

// Greedy decoding of `steps` tokens after `prompt` over the route `nodes` (in layer order);
// `after_prompt` runs once the prompt's first token went through, `at_end` after the last step
// (the session still open). `failovers` (optional) gets the number of times the client had to
// rebuild the route: a hand-off that loses nothing needs none.
inline absl::StatusOr<std::vector<int32_t>> GreedyOverRoute(
    const std::vector<node::NodeServer*>& nodes,
    const std::vector<int32_t>& prompt,
    int steps,
    const std::function<void()>& after_prompt = nullptr,
    const std::function<void()>& at_end = nullptr,
    int* failovers = nullptr) {
  client::LocalModel* local = SharedClientModel();
  if (local == nullptr) return absl::FailedPreconditionError("cannot load the default model");
  auto chain = OpenRouteChain(nodes);
  if (!chain.ok()) return chain.status();
  client::RemoteChain* remote = chain->get();
  client::InferenceSession session(
      &local->embedder(), &local->head(), std::move(*chain), &local->pool());

  // The first token alone, so that the rest of the prompt (several rows) can take a link that
  // came up meanwhile.
  std::vector<int32_t> out;
  const size_t head = std::min<size_t>(1, prompt.size());
  auto logits = session.Feed(std::span<const int32_t>(prompt.data(), head));
  if (!logits.ok()) return logits.status();
  if (after_prompt) after_prompt();
  if (prompt.size() > head) {
    logits = session.Feed(std::span<const int32_t>(prompt.data() + head, prompt.size() - head));
    if (!logits.ok()) return logits.status();
  }
  for (int i = 0; i < steps; ++i) {
    const int32_t t = model::Argmax(*logits);
    out.push_back(t);
    const int32_t next[1] = {t};
    logits = session.Feed(next);
    if (!logits.ok()) return logits.status();
  }
  if (at_end) at_end();
  if (failovers) *failovers = remote->stats().failovers;
  return out;
}

inline std::vector<int32_t> TestPrompt() {
  client::LocalModel* local = SharedClientModel();
  if (local == nullptr) return {1, 2, 3};
  return local->tokenizer().Encode("The three primary colors are", false, false);
}

// The link `node` has open to its next hop, once it left negotiation (or after `timeout`).
inline v1::DownstreamLinkInfo SettledLink(const node::NodeServer& node,
                                          absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  v1::DownstreamLinkInfo last;
  while (absl::Now() < deadline) {
    std::vector<v1::DownstreamLinkInfo> links = node.links();
    if (links.size() == 1) {
      last = links[0];
      const bool negotiating =
          last.transport() == "grpc" &&
          (last.reason() == "negotiating" || last.reason().find(" offered") != std::string::npos);
      if (!negotiating) return last;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return last;
}

}  // namespace strata::testkit
