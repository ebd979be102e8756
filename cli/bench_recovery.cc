// strata bench --nodes N --recovery: how long a session takes to get its next token after a node
// of its route is killed (kill -9), through a local swarm where every span is served by two
// nodes, so that a replacement exists. The chain replays the inputs it holds for the failed
// boundary through the replacement to rebuild its KV; that replay grows with the context, the
// rest of the recovery (noticing the failure, a new route, new sessions, the redirect and the
// resent step) should not.
#include <cstdio>
#include <iostream>

#include "absl/time/clock.h"
#include "cli/bench.h"
#include "cli/commands.h"
#include "client/swarm_client.h"
#include "common/status.h"
#include "common/strings.h"
#include "model/llama.h"
#include "model/sampling.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

// Tokens decoded on the original route before the kill, so that the failure hits a session in
// the middle of its decode, as it would in use.
constexpr int kTokensBeforeKill = 4;
// The failover goal for the recovery time less the replay, p95, at 20 ms a hop.
constexpr double kGoalMs = 1000;

struct Sample {
  std::string victim;  // "first", "middle" or "last" hop of the route
  std::string node_id;
  double recovery_ms = 0;  // kill -> the next token's logits
  double replay_ms = 0;    // the chain's replay forward (compute and traversals)
  int replay_rows = 0;
};

// The hop of a `hops`-hop route that repeat `r` kills: first, middle and last in turn.
int VictimHop(int r, int hops, std::string* kind) {
  static const char* kKinds[] = {"first", "middle", "last"};
  *kind = kKinds[r % 3];
  return r % 3 == 0 ? 0 : r % 3 == 1 ? hops / 2 : hops - 1;
}

// One repeat: a session on a fresh route takes `prompt` and a few tokens, loses a hop to
// kill -9 and decodes the next token through the replacement. The killed node is restarted and
// the swarm serves again before this returns.
absl::StatusOr<Sample> OneFailure(client::SwarmClient& client,
                                  harness::LocalSwarm& swarm,
                                  const std::vector<int32_t>& prompt,
                                  int repeat) {
  client::RemoteChain* chain = nullptr;
  ASSIGN_OR_RETURN(std::unique_ptr<client::InferenceSession> session,
                   client.NewInferenceSession(nullptr, &chain));
  ASSIGN_OR_RETURN(std::span<const float> logits, session->Feed(prompt));
  int32_t token = model::Argmax(logits);
  for (int i = 0; i < kTokensBeforeKill; ++i) {
    const int32_t next[1] = {token};
    ASSIGN_OR_RETURN(logits, session->Feed(next));
    token = model::Argmax(logits);
  }

  Sample s;
  const std::vector<client::HopInfo> hops = chain->Hops();
  s.node_id = hops[VictimHop(repeat, static_cast<int>(hops.size()), &s.victim)].node_id;
  int victim = -1;
  for (size_t i = 0; i < swarm.nodes().size(); ++i) {
    if (swarm.nodes()[i]->id == s.node_id) victim = static_cast<int>(i);
  }
  if (victim < 0) return absl::InternalError(StrCat("node ", s.node_id, " is not in the swarm"));
  const int failovers = chain->stats().failovers;
  swarm.KillNode(victim);
  const absl::Time killed = absl::Now();
  const int32_t next[1] = {token};
  RETURN_IF_ERROR(session->Feed(next).status());
  s.recovery_ms = absl::ToDoubleMilliseconds(absl::Now() - killed);
  const client::ChainStats stats = chain->stats();
  if (stats.failovers == failovers) {
    return absl::InternalError(StrCat("killing ", s.node_id, " caused no failover"));
  }
  s.replay_ms = stats.last_replay_ms;
  s.replay_rows = stats.last_replay_rows;
  session.reset();

  RETURN_IF_ERROR(swarm.RestartNode(victim));
  RETURN_IF_ERROR(swarm.WaitUntilServing(static_cast<int>(swarm.nodes().size())));
  return s;
}

nlohmann::json Summary(const std::vector<Sample>& samples) {
  std::vector<double> recovery, replay, rest;
  nlohmann::json list = nlohmann::json::array();
  for (const Sample& s : samples) {
    recovery.push_back(s.recovery_ms);
    replay.push_back(s.replay_ms);
    rest.push_back(s.recovery_ms - s.replay_ms);
    list.push_back({{"victim", s.victim},
                    {"node_id", s.node_id},
                    {"recovery_ms", s.recovery_ms},
                    {"replay_ms", s.replay_ms},
                    {"replay_rows", s.replay_rows}});
  }
  return {{"recovery_p50_ms", Percentile(recovery, 50)},
          {"recovery_p95_ms", Percentile(recovery, 95)},
          {"replay_p50_ms", Percentile(replay, 50)},
          {"replay_p95_ms", Percentile(replay, 95)},
          {"rest_p50_ms", Percentile(rest, 50)},
          {"rest_p95_ms", Percentile(rest, 95)},
          {"goal_met", Percentile(rest, 95) <= kGoalMs},
          {"samples", list}};
}

}  // namespace

int RunRecoveryBench(const BenchFlags& f) {
  const std::string model = f.model.empty() ? DefaultModelPath() : f.model;
  auto file = model::Model::Open(model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  const model::HParams& hp = (*file)->hparams();
  for (int c : f.contexts) {
    if (c + kTokensBeforeKill + 1 > hp.n_ctx_train) {
      return Fail(StrCat("a context of ", c, " tokens exceeds the model's ", hp.n_ctx_train));
    }
  }
  if (!f.json) {
    std::printf("starting %d nodes: %d spans, two nodes each\n", 2 * f.nodes, f.nodes);
    std::fflush(stdout);
  }
  auto swarm =
      StartBenchSwarm(model, f.delays_ms, ReplicatedSpans(hp.n_layer, f.nodes, 2, f.node_threads));
  if (!swarm.ok()) return Fail(std::string(swarm.status().message()));
  auto client = client::SwarmClient::Create(BenchClientOptions(**swarm, model, f.threads));
  if (!client.ok()) return Fail(std::string(client.status().message()));

  nlohmann::json out;
  out["model"] = model;
  out["spans"] = f.nodes;
  out["nodes"] = 2 * f.nodes;
  out["repeat"] = f.repeat;
  out["tokens_before_kill"] = kTokensBeforeKill;
  out["runs"] = nlohmann::json::array();
  if (!f.json) {
    std::printf(
        "recovery: kill -9 of a hop -> the next token (first, middle and last hop in turn, %d "
        "repeats)\nreplay: the forward that rebuilds the replacement's KV; rest = recovery - "
        "replay, goal p95 <= %.0f ms\n",
        f.repeat,
        kGoalMs);
    std::printf("%-9s %-8s %-13s %-13s %-11s %-11s %-9s %-9s %-5s\n",
                "delay_ms",
                "context",
                "recovery_p50",
                "recovery_p95",
                "replay_p50",
                "replay_p95",
                "rest_p50",
                "rest_p95",
                "goal");
  }
  for (double delay : f.delays_ms) {
    absl::Status st = SetBenchDelay(**swarm, delay);
    if (!st.ok()) return Fail(std::string(st.message()));
    for (int context : f.contexts) {
      const std::vector<int32_t> prompt = BenchPrompt(context, hp.n_vocab);
      std::vector<Sample> samples;
      for (int r = 0; r < f.repeat; ++r) {
        auto s = OneFailure(**client, **swarm, prompt, r);
        if (!s.ok()) return Fail(std::string(s.status().message()));
        samples.push_back(*s);
      }
      nlohmann::json j = Summary(samples);
      j["delay_ms"] = delay;
      j["context"] = context;
      if (!f.json) {
        std::printf("%-9.0f %-8d %-13.1f %-13.1f %-11.1f %-11.1f %-9.1f %-9.1f %-5s\n",
                    delay,
                    context,
                    j["recovery_p50_ms"].get<double>(),
                    j["recovery_p95_ms"].get<double>(),
                    j["replay_p50_ms"].get<double>(),
                    j["replay_p95_ms"].get<double>(),
                    j["rest_p50_ms"].get<double>(),
                    j["rest_p95_ms"].get<double>(),
                    j["goal_met"].get<bool>() ? "yes" : "no");
        std::fflush(stdout);
      }
      out["runs"].push_back(std::move(j));
    }
  }
  if (f.json) std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace strata::cli
