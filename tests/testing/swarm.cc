#include "tests/testing/swarm.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/strings.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "tests/testing/paths.h"

namespace strata::testing {

std::string LineField(const std::string& line, const std::string& key) {
  for (absl::string_view part : absl::StrSplit(line, ' ')) {
    if (absl::StartsWith(part, key + "=")) return std::string(part.substr(key.size() + 1));
  }
  return "";
}

std::string LocalSwarm::Binary() { return BinaryDir() + "/strata"; }

absl::StatusOr<std::unique_ptr<LocalSwarm>> LocalSwarm::Start(
    std::vector<std::string> coordinator_args) {
  auto swarm = std::unique_ptr<LocalSwarm>(new LocalSwarm());
  std::vector<std::string> argv = {Binary(), "coordinator", "--listen", "127.0.0.1:0",
                                   "--http", "127.0.0.1:0", "--ttl-ms", "3000",
                                   "--heartbeat-ms", "300"};
  argv.insert(argv.end(), coordinator_args.begin(), coordinator_args.end());
  auto proc = Subprocess::Start(argv);
  if (!proc.ok()) return proc.status();
  swarm->coordinator_ = std::move(*proc);
  auto line = swarm->coordinator_->ReadLine(absl::Seconds(20));
  if (!line.ok()) return line.status();
  swarm->coordinator_address_ = LineField(*line, "grpc");
  swarm->http_address_ = LineField(*line, "http");
  if (swarm->coordinator_address_.empty()) {
    return absl::InternalError(StrCat("unexpected coordinator line: ", *line));
  }
  return swarm;
}

LocalSwarm::~LocalSwarm() {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
    if ((*it)->process) (*it)->process->Stop(absl::Seconds(3));
  }
  if (coordinator_) coordinator_->Stop(absl::Seconds(3));
}

absl::StatusOr<RunningNode*> LocalSwarm::AddNode(const NodeSpec& spec) {
  std::vector<std::string> argv = {Binary(), "node", "--coordinator", coordinator_address_,
                                   "--model", DefaultModelPath(), "--layers", spec.layers,
                                   "--threads", std::to_string(spec.threads), "--kv-memory",
                                   std::to_string(spec.kv_memory_mib), "--quiet"};
  if (spec.max_layers > 0) {
    argv.insert(argv.end(), {"--max-layers", std::to_string(spec.max_layers)});
  }
  if (!spec.id.empty()) argv.insert(argv.end(), {"--id", spec.id});
  argv.insert(argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  auto proc = Subprocess::Start(argv);
  if (!proc.ok()) return proc.status();
  auto node = std::make_unique<RunningNode>();
  node->process = std::move(*proc);
  auto line = node->process->ReadLine(absl::Seconds(60));
  if (!line.ok()) return line.status();
  node->address = LineField(*line, "grpc");
  node->id = LineField(*line, "id");
  std::vector<std::string> layers = absl::StrSplit(LineField(*line, "layers"), ':');
  if (node->address.empty() || layers.size() != 2 ||
      !absl::SimpleAtoi(layers[0], &node->first_layer) ||
      !absl::SimpleAtoi(layers[1], &node->last_layer)) {
    return absl::InternalError(StrCat("unexpected node line: ", *line));
  }
  nodes_.push_back(std::move(node));
  return nodes_.back().get();
}

absl::Status LocalSwarm::WaitUntilServing(int nodes, absl::Duration timeout) {
  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(coordinator_address_, grpc::InsecureChannelCredentials()));
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer";
  while (absl::Now() < deadline) {
    v1::SwarmSnapshot snap;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (stub->GetSwarm(&ctx, v1::SwarmRequest(), &snap).ok()) {
      int online = 0;
      for (const auto& n : snap.nodes()) online += n.state() == v1::NODE_STATE_ONLINE;
      if (online == nodes && snap.uncovered_layers_size() == 0) return absl::OkStatus();
      last = StrCat(online, " nodes online, ", snap.uncovered_layers_size(), " layers uncovered");
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(StrCat("swarm not serving: ", last));
}

}  // namespace strata::testing
