// A whole swarm on this machine, as real processes: a `strata coordinator`, `strata node`s and,
// optionally, a `strata-linkem` proxy in front of every node so that every network traversal
// (client -> node, node -> node, last node -> client) crosses one emulated link. Used by
// `strata demo`, `strata bench` and the multi-process tests. Everything started is stopped when
// the LocalSwarm is destroyed, and killed if this process dies.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/subprocess.h"
#include "harness/linkem/linkem_process.h"

namespace strata::harness {

struct LocalSwarmOptions {
  std::string strata_binary;  // path of `strata`
  std::string linkem_binary;  // path of `strata-linkem` (with links)
  std::string model_path;
  bool links = false;   // a link emulator in front of every node
  double delay_ms = 0;  // one-way delay of every link (each direction)
  double jitter_ms = 0;
  double bandwidth_mbit = 0;
  int ttl_ms = 3000;  // coordinator membership TTL
  int heartbeat_ms = 300;
  std::string stderr_path;  // children's stderr: "" inherits, "/dev/null" discards
  std::vector<std::string> coordinator_args;
};

struct NodeSpec {
  std::string layers = "auto";  // "A:B" or "auto"
  int max_layers = 0;
  int threads = 1;
  int kv_memory_mib = 256;
  std::string id;  // empty: chosen by the node
  std::vector<std::string> extra_args;
};

struct RunningNode {
  NodeSpec spec;
  std::unique_ptr<Subprocess> process;
  std::unique_ptr<linkem::LinkEmulator> link;  // when the swarm has links
  std::string address;                         // what the swarm dials (the proxy when there is one)
  std::string listen;                          // where the node itself listens
  std::string id;
  int first_layer = 0;
  int last_layer = 0;
};

class LocalSwarm {
 public:
  static absl::StatusOr<std::unique_ptr<LocalSwarm>> Start(const LocalSwarmOptions& options);
  ~LocalSwarm();

  // Starts a node and waits until it has joined and loaded its span.
  absl::StatusOr<RunningNode*> AddNode(const NodeSpec& spec);
  // Kills node `i` at once (SIGKILL): no goodbye, its sessions break.
  void KillNode(int i);
  // Asks node `i` to leave (SIGTERM) and waits up to `timeout` for it to exit.
  absl::Status StopNode(int i, absl::Duration timeout = absl::Seconds(30));
  // Starts node `i` again with the same spec (and link, when there is one).
  absl::Status RestartNode(int i);
  // Another coordinator; nodes started afterwards heartbeat to all of them.
  absl::Status AddCoordinator();
  // Kills coordinator `i` (SIGKILL) / starts it again on the same address.
  void KillCoordinator(int i);
  absl::Status RestartCoordinator(int i);
  // Waits until the coordinator reports every layer covered by `nodes` online nodes.
  absl::Status WaitUntilServing(int nodes, absl::Duration timeout = absl::Seconds(60));
  // Sets the delay of every node's link (with links).
  absl::Status SetDelay(double delay_ms, double jitter_ms = 0);
  // Stops every node and the coordinator (also done by the destructor).
  void Stop();

  // The first coordinator's address, and all of them.
  const std::string& coordinator() const { return coordinators_[0].address; }
  std::vector<std::string> coordinators() const;
  const std::string& http() const { return coordinators_[0].http; }
  std::vector<std::unique_ptr<RunningNode>>& nodes() { return nodes_; }
  const LocalSwarmOptions& options() const { return options_; }

 private:
  struct Coordinator {
    std::unique_ptr<Subprocess> process;
    std::string address;  // fixed, so a restart keeps it
    std::string http;
  };
  absl::Status StartCoordinator(Coordinator& c);
  absl::Status LaunchNode(RunningNode& node);

  LocalSwarmOptions options_;
  std::vector<Coordinator> coordinators_;
  std::vector<std::unique_ptr<RunningNode>> nodes_;
};

// The value of `key=` in a "word key=value ..." line.
std::string LineField(const std::string& line, const std::string& key);
// A TCP port on 127.0.0.1 that was free a moment ago.
absl::StatusOr<int> FreeLoopbackPort();

}  // namespace strata::harness
