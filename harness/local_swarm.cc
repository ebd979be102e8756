#include "harness/local_swarm.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "strata/v1/coordinator.grpc.pb.h"

namespace strata::harness {

std::string LineField(const std::string& line, const std::string& key) {
  for (absl::string_view part : absl::StrSplit(line, ' ')) {
    if (absl::StartsWith(part, key + "=")) return std::string(part.substr(key.size() + 1));
  }
  return "";
}

absl::StatusOr<int> FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("cannot bind a loopback port");
  }
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

absl::StatusOr<std::unique_ptr<LocalSwarm>> LocalSwarm::Start(const LocalSwarmOptions& options) {
  auto swarm = std::unique_ptr<LocalSwarm>(new LocalSwarm());
  swarm->options_ = options;
  RETURN_IF_ERROR(swarm->AddCoordinator());
  return swarm;
}

std::vector<std::string> LocalSwarm::coordinators() const {
  std::vector<std::string> out;
  for (const Coordinator& c : coordinators_) out.push_back(c.address);
  return out;
}

absl::Status LocalSwarm::AddCoordinator() {
  Coordinator c;
  ASSIGN_OR_RETURN(int port, FreeLoopbackPort());
  c.address = StrCat("127.0.0.1:", port);
  RETURN_IF_ERROR(StartCoordinator(c));
  coordinators_.push_back(std::move(c));
  return absl::OkStatus();
}

absl::Status LocalSwarm::StartCoordinator(Coordinator& c) {
  std::vector<std::string> argv = {options_.strata_binary,
                                   "coordinator",
                                   "--listen",
                                   c.address,
                                   "--http",
                                   "127.0.0.1:0",
                                   "--ttl-ms",
                                   std::to_string(options_.ttl_ms),
                                   "--heartbeat-ms",
                                   std::to_string(options_.heartbeat_ms)};
  argv.insert(argv.end(), options_.coordinator_args.begin(), options_.coordinator_args.end());
  ASSIGN_OR_RETURN(c.process, Subprocess::Start(argv, options_.stderr_path));
  auto line = c.process->ReadLine(absl::Seconds(20));
  if (!line.ok()) {
    return absl::Status(line.status().code(),
                        StrCat("the coordinator did not start: ", line.status().message()));
  }
  if (LineField(*line, "grpc") != c.address) {
    return absl::InternalError(StrCat("unexpected coordinator line: ", *line));
  }
  c.http = LineField(*line, "http");
  return absl::OkStatus();
}

void LocalSwarm::KillCoordinator(int i) {
  if (coordinators_[i].process) coordinators_[i].process->Signal(SIGKILL);
  if (coordinators_[i].process) coordinators_[i].process->Wait(absl::Seconds(5));
}

absl::Status LocalSwarm::RestartCoordinator(int i) {
  if (coordinators_[i].process) coordinators_[i].process->Stop(absl::Seconds(2));
  return StartCoordinator(coordinators_[i]);
}

LocalSwarm::~LocalSwarm() { Stop(); }

void LocalSwarm::Stop() {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
    if ((*it)->process) (*it)->process->Stop(absl::Seconds(5));
  }
  nodes_.clear();
  for (Coordinator& c : coordinators_) {
    if (c.process) c.process->Stop(absl::Seconds(5));
    c.process.reset();
  }
}

absl::StatusOr<RunningNode*> LocalSwarm::AddNode(const NodeSpec& spec) {
  auto node = std::make_unique<RunningNode>();
  node->spec = spec;
  if (options_.links) {
    // The node listens on a port chosen here; a proxy in front of it is what the swarm dials.
    ASSIGN_OR_RETURN(int port, FreeLoopbackPort());
    node->listen = StrCat("127.0.0.1:", port);
    linkem::LinkEmulatorOptions lo;
    lo.binary = options_.linkem_binary;
    lo.links = {{"127.0.0.1:0", node->listen}};
    lo.delay_ms = options_.delay_ms;
    lo.jitter_ms = options_.jitter_ms;
    lo.bandwidth_mbit = options_.bandwidth_mbit;
    lo.seed = nodes_.size() + 1;
    ASSIGN_OR_RETURN(node->link, linkem::LinkEmulator::Start(lo));
  } else {
    // A fixed port, so that a restarted node is found at the same address.
    ASSIGN_OR_RETURN(int port, FreeLoopbackPort());
    node->listen = StrCat("127.0.0.1:", port);
  }
  RETURN_IF_ERROR(LaunchNode(*node));
  nodes_.push_back(std::move(node));
  return nodes_.back().get();
}

absl::Status LocalSwarm::LaunchNode(RunningNode& node) {
  const NodeSpec& spec = node.spec;
  std::string coordinators;
  for (const Coordinator& c : coordinators_) {
    coordinators += (coordinators.empty() ? "" : ",") + c.address;
  }
  std::vector<std::string> argv = {options_.strata_binary,
                                   "node",
                                   "--coordinator",
                                   coordinators,
                                   "--model",
                                   options_.model_path,
                                   "--layers",
                                   spec.layers,
                                   "--threads",
                                   std::to_string(spec.threads),
                                   "--kv-memory",
                                   std::to_string(spec.kv_memory_mib),
                                   "--quiet",
                                   "--listen",
                                   node.listen};
  if (node.link) argv.insert(argv.end(), {"--advertise", node.link->listen_address(0)});
  if (spec.max_layers > 0) {
    argv.insert(argv.end(), {"--max-layers", std::to_string(spec.max_layers)});
  }
  if (!spec.id.empty()) argv.insert(argv.end(), {"--id", spec.id});
  argv.insert(argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  ASSIGN_OR_RETURN(node.process, Subprocess::Start(argv, options_.stderr_path));
  auto line = node.process->ReadLine(absl::Seconds(120));
  if (!line.ok()) {
    return absl::Status(line.status().code(),
                        StrCat("a node did not start: ", line.status().message()));
  }
  const std::string bound = LineField(*line, "grpc");
  node.address = node.link ? node.link->listen_address(0) : bound;
  node.id = LineField(*line, "id");
  std::vector<std::string> layers = absl::StrSplit(LineField(*line, "layers"), ':');
  if (bound.empty() || layers.size() != 2 || !absl::SimpleAtoi(layers[0], &node.first_layer) ||
      !absl::SimpleAtoi(layers[1], &node.last_layer)) {
    return absl::InternalError(StrCat("unexpected node line: ", *line));
  }
  // Keep the id across restarts so the swarm sees the same node come back.
  node.spec.id = node.id;
  return absl::OkStatus();
}

void LocalSwarm::KillNode(int i) {
  RunningNode& n = *nodes_[i];
  if (n.process) {
    n.process->Signal(SIGKILL);
    n.process->Wait(absl::Seconds(5));
  }
}

absl::Status LocalSwarm::StopNode(int i, absl::Duration timeout) {
  RunningNode& n = *nodes_[i];
  if (!n.process) return absl::OkStatus();
  n.process->Signal(SIGTERM);
  if (n.process->Wait(timeout) == -1) {
    n.process->Stop(absl::Seconds(1));
    return absl::DeadlineExceededError(
        StrCat("node ", n.id, " did not leave within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::Status LocalSwarm::RestartNode(int i) {
  RunningNode& n = *nodes_[i];
  if (n.process) n.process->Stop(absl::Seconds(2));
  return LaunchNode(n);
}

absl::Status LocalSwarm::WaitUntilServing(int nodes, absl::Duration timeout) {
  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(coordinator(), grpc::InsecureChannelCredentials()));
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no answer from the coordinator";
  while (absl::Now() < deadline) {
    v1::SwarmSnapshot snap;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (stub->GetSwarm(&ctx, v1::SwarmRequest(), &snap).ok()) {
      int online = 0;
      for (const auto& n : snap.nodes()) online += n.state() == v1::NODE_STATE_ONLINE;
      if (online == nodes && snap.uncovered_layers_size() == 0) return absl::OkStatus();
      last = StrCat(online,
                    " of ",
                    nodes,
                    " nodes online, ",
                    snap.uncovered_layers_size(),
                    " layers uncovered");
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(StrCat("the swarm is not serving: ", last));
}

absl::Status LocalSwarm::SetDelay(double delay_ms, double jitter_ms) {
  for (auto& n : nodes_) {
    if (!n->link) return absl::FailedPreconditionError("the swarm was started without links");
    absl::Status st = n->link->Command(StrCat("delay 0 ", delay_ms, " ", jitter_ms));
    if (!st.ok()) return st;
  }
  options_.delay_ms = delay_ms;
  return absl::OkStatus();
}

}  // namespace strata::harness
