// Starts real `strata` processes on loopback for multi-process tests: a coordinator and nodes.
// Everything is stopped when the LocalSwarm is destroyed (and killed if the test process dies).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/subprocess.h"

namespace strata::testing {

struct NodeSpec {
  std::string layers = "auto";  // "A:B" or "auto"
  int max_layers = 0;
  int threads = 1;
  int kv_memory_mib = 256;
  std::string id;               // empty: chosen by the node
  std::vector<std::string> extra_args;
};

struct RunningNode {
  std::unique_ptr<Subprocess> process;
  std::string address;
  std::string id;
  int first_layer = 0;
  int last_layer = 0;
};

class LocalSwarm {
 public:
  // Starts a coordinator (with a short TTL so tests see departures quickly).
  static absl::StatusOr<std::unique_ptr<LocalSwarm>> Start(
      std::vector<std::string> coordinator_args = {});
  ~LocalSwarm();

  // Starts a node with the default model and waits for its listening line.
  absl::StatusOr<RunningNode*> AddNode(const NodeSpec& spec);
  // Waits until the coordinator reports every layer covered by `nodes` online nodes.
  absl::Status WaitUntilServing(int nodes, absl::Duration timeout = absl::Seconds(30));

  const std::string& coordinator() const { return coordinator_address_; }
  const std::string& http() const { return http_address_; }
  std::vector<std::unique_ptr<RunningNode>>& nodes() { return nodes_; }

  // Path of the strata binary under test.
  static std::string Binary();

 private:
  std::unique_ptr<Subprocess> coordinator_;
  std::string coordinator_address_;
  std::string http_address_;
  std::vector<std::unique_ptr<RunningNode>> nodes_;
};

// The value of `key=` in a "word key=value ..." line.
std::string LineField(const std::string& line, const std::string& key);

}  // namespace strata::testing
