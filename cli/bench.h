// `strata bench`: the local engine (default) or a local swarm of real processes (--nodes).
#pragma once

#include <string>
#include <vector>

namespace strata::cli {

struct BenchFlags {
  std::string model;
  int threads = 0;
  int prompt_tokens = 512;
  int decode_tokens = 128;
  int repeat = 3;
  bool json = false;
  // Swarm mode.
  int nodes = 0;                       // > 0: start a local swarm of this many nodes
  std::vector<double> delays_ms = {0};  // one-way delay per link, swept in order
  std::vector<int> sessions = {1};      // concurrent sessions, swept in order
  int node_threads = 0;                 // threads per node process (0: all CPUs)
};

int RunLocalBench(const BenchFlags& flags);
int RunSwarmBench(const BenchFlags& flags);

// A fixed pseudo-random prompt of `n` ids spread over the vocabulary, the same on every run.
std::vector<int32_t> BenchPrompt(int n, int vocab);
double Median(std::vector<double> v);
double Percentile(std::vector<double> v, double p);

}  // namespace strata::cli
