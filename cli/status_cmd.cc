// strata status: the swarm as a coordinator sees it, as a table in the terminal: nodes (span,
// state, throughput, load, sessions, KV), coverage with its gaps, and the route a client would
// get now. Asks the coordinators in order over gRPC (GetSwarm, GetRoute); the first that answers
// is shown. --json prints the same as the coordinator's /api/swarm plus the route.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/grpc_util.h"
#include "coordinator/http.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "transport/channels.h"

namespace strata::cli {
namespace {

struct StatusFlags {
  std::string coordinators;
  bool json = false;
  int timeout_ms = 3000;
};

// Node-provided strings may hold anything: keep terminal control characters out of the output.
std::string Printable(const std::string& s, size_t max_len = 40) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else {
      out += static_cast<char>(c);
    }
  }
  if (out.size() > max_len) out = out.substr(0, max_len - 1) + "~";
  return out;
}

std::string Bytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return absl::StrFormat("%.1fG", b / 1073741824.0);
  if (b >= (int64_t{1} << 20)) return absl::StrFormat("%.1fM", b / 1048576.0);
  if (b >= 1024) return absl::StrFormat("%.1fK", b / 1024.0);
  return absl::StrFormat("%dB", b);
}

std::string Duration(int64_t ms) {
  const int64_t s = ms / 1000;
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
}

std::string Layers(int first, int last) {
  return last - first <= 1 ? absl::StrFormat("%d", first)
                           : absl::StrFormat("%d-%d", first, last - 1);
}

std::string LayerRuns(const std::vector<int>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out +=
        i == j ? absl::StrFormat("%d", layers[i]) : absl::StrFormat("%d-%d", layers[i], layers[j]);
    i = j + 1;
  }
  return out;
}

const char* StateName(v1::NodeState s) {
  switch (s) {
    case v1::NODE_STATE_JOINING:
      return "joining";
    case v1::NODE_STATE_ONLINE:
      return "online";
    case v1::NODE_STATE_DRAINING:
      return "draining";
    default:
      return "?";
  }
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()));
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void PrintSwarm(const std::string& coordinator,
                const v1::SwarmSnapshot& s,
                const absl::StatusOr<v1::RouteResponse>& route) {
  int online = 0;
  double tokens = 0;
  for (const v1::NodeStatus& n : s.nodes()) {
    online += n.state() == v1::NODE_STATE_ONLINE;
    tokens += n.load().tokens_per_s() * std::max(0, n.last_layer() - n.first_layer()) /
              std::max(1, s.num_layers());
  }
  std::printf("coordinator %s  model %s  %d layers  %d nodes (%d online)  %.1f tok/s\n\n",
              coordinator.c_str(),
              Printable(s.model_id(), 80).c_str(),
              s.num_layers(),
              s.nodes_size(),
              online,
              tokens);
  std::vector<std::vector<std::string>> rows = {{"NODE",
                                                 "ADDRESS",
                                                 "LAYERS",
                                                 "STATE",
                                                 "OFFERED",
                                                 "ROWS/S",
                                                 "SESSIONS",
                                                 "QUEUE",
                                                 "KV",
                                                 "UPTIME",
                                                 "HEARTBEAT",
                                                 "BACKEND"}};
  for (const v1::NodeStatus& n : s.nodes()) {
    std::string state = StateName(n.state());
    if (n.banned_until_unix_ms() > s.unix_ms()) state += " (banned)";
    rows.push_back({Printable(n.node().node_id()),
                    Printable(n.node().address()),
                    Layers(n.first_layer(), n.last_layer()),
                    state,
                    absl::StrFormat("%.0f tok/s", n.throughput()),
                    absl::StrFormat("%.1f", n.load().tokens_per_s()),
                    absl::StrFormat("%d", n.load().active_sessions()),
                    absl::StrFormat("%d", n.load().queue_depth()),
                    Bytes(n.load().kv_used_bytes()) + "/" + Bytes(n.load().kv_capacity_bytes()),
                    Duration(s.unix_ms() - n.joined_unix_ms()),
                    Duration(s.unix_ms() - n.last_heartbeat_unix_ms()) + " ago",
                    Printable(n.node().backend(), 20)});
  }
  if (s.nodes_size() == 0) {
    std::printf("no nodes\n");
  } else {
    PrintTable(rows);
  }

  std::printf("\ncoverage: ");
  if (s.num_layers() == 0) {
    std::printf("no model yet\n");
  } else if (s.uncovered_layers_size() > 0) {
    std::vector<int> gaps(s.uncovered_layers().begin(), s.uncovered_layers().end());
    std::printf("GAP - layers %s of %d are not served\n", LayerRuns(gaps).c_str(), s.num_layers());
  } else {
    double weakest = 1e300;
    int weakest_layer = 0;
    for (const v1::LayerCoverage& c : s.coverage()) {
      if (c.throughput() < weakest) {
        weakest = c.throughput();
        weakest_layer = c.layer();
      }
    }
    std::printf("all %d layers served; weakest layer %d offers %.0f tok/s\n",
                s.num_layers(),
                weakest_layer,
                weakest);
  }
  std::printf("route: ");
  if (!route.ok()) {
    std::printf("none (%s)\n", std::string(route.status().message()).c_str());
    return;
  }
  std::string line = "client";
  for (const v1::Hop& h : route->route().hops()) {
    line += " -> " + Printable(h.node_id()) + " [" + Layers(h.first_layer(), h.last_layer()) + "]";
  }
  std::printf(
      "%s -> client  (est. %.2f ms per step)\n", line.c_str(), route->route().estimated_step_ms());
}

int RunStatus(const StatusFlags& f) {
  std::vector<std::string> coordinators;
  for (absl::string_view c : absl::StrSplit(f.coordinators, ',', absl::SkipEmpty())) {
    coordinators.emplace_back(c);
  }
  if (coordinators.empty()) return Fail("--coordinator is required");
  std::string errors;
  for (const std::string& address : coordinators) {
    auto stub = v1::Coordinator::NewStub(transport::ChannelCache::Default().Get(address));
    const auto deadline =
        std::chrono::system_clock::now() + std::chrono::milliseconds(f.timeout_ms);
    v1::SwarmSnapshot swarm;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      grpc::Status st = stub->GetSwarm(&ctx, v1::SwarmRequest(), &swarm);
      if (!st.ok()) {
        errors += "\n  " + address + ": " + st.error_message();
        continue;
      }
    }
    absl::StatusOr<v1::RouteResponse> route;
    {
      v1::RouteRequest req;
      req.set_alternates(0);
      v1::RouteResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      grpc::Status st = stub->GetRoute(&ctx, req, &resp);
      route = st.ok() ? absl::StatusOr<v1::RouteResponse>(resp)
                      : absl::StatusOr<v1::RouteResponse>(FromGrpcStatus(st));
    }
    if (f.json) {
      nlohmann::json j = coordinator::SwarmToJson(swarm);
      j["coordinator"] = address;
      if (route.ok()) {
        j["route"] = coordinator::RouteToJson(*route);
      } else {
        j["route"] = {{"error",
                       {{"code", absl::StatusCodeToString(route.status().code())},
                        {"message", std::string(route.status().message())}}}};
      }
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      PrintSwarm(address, swarm, route);
    }
    return 0;
  }
  return Fail("no coordinator answered:" + errors);
}

}  // namespace

void RegisterStatus(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<StatusFlags>();
  CLI::App* cmd = app.add_subcommand(
      "status", "Show a swarm: nodes, layer coverage and gaps, and the route a client would get");
  cmd->add_option("--coordinator",
                  flags->coordinators,
                  "Coordinator gRPC address(es), comma-separated; the first that answers is shown")
      ->required();
  cmd->add_flag("--json", flags->json, "Print one JSON object (the /api/swarm shape plus route)");
  cmd->add_option("--timeout-ms", flags->timeout_ms, "Deadline per coordinator")
      ->capture_default_str()
      ->check(CLI::Range(1, 600000));
  cmd->callback([flags, exit_code] { *exit_code = RunStatus(*flags); });
}

}  // namespace strata::cli
