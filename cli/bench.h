// `strata bench`: the local engine (default) or a local swarm of real processes (--nodes):
// decode speed, failover recovery (--recovery) or a speculative decoding sweep (--spec-sweep).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "harness/local_swarm.h"
#include "strata/client.h"

namespace strata::cli {

struct BenchFlags {
  std::string model;
  int threads = 0;
  int prompt_tokens = 512;
  int decode_tokens = 128;
  int repeat = 3;
  bool json = false;
  // Swarm mode.
  int nodes = 0;                        // > 0: start a local swarm of this many nodes
  std::vector<double> delays_ms = {0};  // one-way delay per link, swept in order
  std::vector<int> sessions = {1};      // concurrent sessions, swept in order
  int node_threads = 0;                 // threads per node process (0: all CPUs)
  // Failover recovery (--recovery): `nodes` spans, each served by two nodes.
  bool recovery = false;
  std::vector<int> contexts = {128, 1024};  // tokens in the session when a node dies, swept
  // Speculative decoding sweep (--spec-sweep): `nodes` spans, each served by two nodes.
  bool spec_sweep = false;
  bool spec_quick = false;  // the smaller matrix
  int gamma = 4;            // drafts per pass (start value unless fixed_gamma)
  bool fixed_gamma = false;
  bool spec_paired = false;  // each speculative row against an M0 run made right before it
  std::vector<std::string> spec_drafts;  // draft models: M1 and M3 rows with draft:PATH each
  // Speculative rows kept (empty: all): by mode ("chain", "tree", "pipelined", "dsi") and by
  // drafter ("ngram", "self", "draft", "oracle", or a whole name such as "oracle:0.9").
  std::vector<std::string> spec_modes;
  std::vector<std::string> spec_drafters;
};

int RunLocalBench(const BenchFlags& flags);
int RunSwarmBench(const BenchFlags& flags);
int RunRecoveryBench(const BenchFlags& flags);
int RunSpecSweep(const BenchFlags& flags);

// A fixed pseudo-random prompt of `n` ids spread over the vocabulary, the same on every run.
std::vector<int32_t> BenchPrompt(int n, int vocab);
double Median(std::vector<double> v);
double Percentile(std::vector<double> v, double p);

// What the swarm benchmarks share (bench_swarm.cc).

// Starts a coordinator and one `strata node` per spec (this binary, serving `model`) and waits
// until they all serve. When any of `delays_ms` is above zero, every node gets a link emulator
// in front of it (see SetBenchDelay).
absl::StatusOr<std::unique_ptr<harness::LocalSwarm>> StartBenchSwarm(
    const std::string& model,
    const std::vector<double>& delays_ms,
    const std::vector<harness::NodeSpec>& nodes);
// Node specs for `spans` contiguous spans covering `n_layers` layers, each span served by
// `replicas` nodes: a killed node has a replacement, and DSI finds disjoint chains.
std::vector<harness::NodeSpec> ReplicatedSpans(int n_layers, int spans, int replicas, int threads);
// Sets the one-way delay of every link; nothing to do for a swarm without links (all delays 0).
absl::Status SetBenchDelay(harness::LocalSwarm& swarm, double delay_ms);
// Client options for a benchmark against `swarm`.
ClientOptions BenchClientOptions(const harness::LocalSwarm& swarm,
                                 const std::string& model,
                                 int threads);

}  // namespace strata::cli
