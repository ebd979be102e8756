#include "coordinator/registry.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/strings.h"
#include "coordinator/assignment.h"

namespace strata::coordinator {
namespace {

constexpr size_t kMaxIdBytes = 128;
constexpr size_t kMaxAddressBytes = 256;
constexpr size_t kMaxTextBytes = 256;
constexpr int kMaxRtts = 256;

int64_t UnixMs(absl::Time t) { return absl::ToUnixMillis(t); }

std::string DurationText(absl::Duration d) { return absl::FormatDuration(d); }

std::string SpanText(int first, int last) { return StrCat("[", first, ", ", last, ")"); }

const char* StateName(v1::NodeState state) {
  switch (state) {
    case v1::NODE_STATE_JOINING:
      return "joining";
    case v1::NODE_STATE_ONLINE:
      return "online";
    case v1::NODE_STATE_DRAINING:
      return "draining";
    default:
      return "unspecified";
  }
}

absl::Status CheckText(std::string_view field, const std::string& value, size_t max_bytes) {
  if (value.size() > max_bytes) {
    return absl::InvalidArgumentError(
        StrCat(field, " is ", value.size(), " bytes long; at most ", max_bytes, " are allowed"));
  }
  return absl::OkStatus();
}

// "host:port" with a non-empty host and a port in 1..65535 ("[v6]:port" included).
absl::Status CheckAddress(const std::string& address) {
  RETURN_IF_ERROR(CheckText("address", address, kMaxAddressBytes));
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) || port < 1 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        StrCat("address '", address, "' is not HOST:PORT with a port in 1..65535"));
  }
  return absl::OkStatus();
}

bool FiniteNonNegative(double x) { return std::isfinite(x) && x >= 0; }

}  // namespace

absl::Status ValidateDescriptor(const v1::NodeDescriptor& node) {
  RETURN_IF_ERROR(CheckText("node_id", node.node_id(), kMaxIdBytes));
  RETURN_IF_ERROR(CheckAddress(node.address()));
  if (node.model_id().empty()) return absl::InvalidArgumentError("model_id is empty");
  RETURN_IF_ERROR(CheckText("model_id", node.model_id(), kMaxTextBytes));
  RETURN_IF_ERROR(CheckText("backend", node.backend(), kMaxTextBytes));
  RETURN_IF_ERROR(CheckText("version", node.version(), kMaxTextBytes));
  if (node.num_layers() < 1 || node.num_layers() > kMaxModelLayers) {
    return absl::InvalidArgumentError(
        StrCat("num_layers must be in 1..", kMaxModelLayers, ", not ", node.num_layers()));
  }
  if (node.max_layers() < 0) {
    return absl::InvalidArgumentError(StrCat("max_layers is negative: ", node.max_layers()));
  }
  if (!FiniteNonNegative(node.layer_ms()) || !FiniteNonNegative(node.batched_layer_ms())) {
    return absl::InvalidArgumentError("layer_ms and batched_layer_ms must be finite and >= 0");
  }
  if (node.kv_capacity_bytes() < 0) {
    return absl::InvalidArgumentError("kv_capacity_bytes is negative");
  }
  return absl::OkStatus();
}

Registry::Registry(RegistryOptions options, Clock* clock)
    : options_(std::move(options)), clock_(clock), model_id_(options_.model_id) {}

absl::StatusOr<v1::JoinResponse> Registry::Join(const v1::JoinRequest& request) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  if (request.protocol_version() != v1::PROTOCOL_VERSION_1) {
    return absl::FailedPreconditionError(
        StrCat("protocol version mismatch: the node speaks ",
               v1::ProtocolVersion_Name(request.protocol_version()),
               " (",
               static_cast<int>(request.protocol_version()),
               "), this coordinator speaks ",
               v1::ProtocolVersion_Name(v1::PROTOCOL_VERSION_1),
               " (",
               static_cast<int>(v1::PROTOCOL_VERSION_1),
               ")"));
  }
  const v1::NodeDescriptor& node = request.node();
  RETURN_IF_ERROR(ValidateDescriptor(node));
  RETURN_IF_ERROR(CheckModelLocked(node));

  const std::string id = node.node_id().empty() ? NewIdLocked() : node.node_id();
  RETURN_IF_ERROR(CheckRoomLocked(id, node.address()));
  // Span choice sees the swarm without the record this join replaces.
  v1::SwarmSnapshot swarm = SnapshotLocked(now, id, node.address(), /*with_events=*/false);
  swarm.set_num_layers(node.num_layers());
  ASSIGN_OR_RETURN(const LayerRange span, ChooseSpan(swarm, request));

  AdoptModelLocked(node);
  Member member;
  member.descriptor = node;
  member.descriptor.set_node_id(id);
  member.state = v1::NODE_STATE_JOINING;
  member.first_layer = span.first_layer;
  member.last_layer = span.last_layer;
  member.joined = now;
  member.last_heartbeat = now;
  const bool rejoin = members_.contains(id);
  InsertLocked(id, std::move(member));
  LogLocked(now,
            "join",
            id,
            StrCat(rejoin ? "rejoined" : "joined",
                   " at ",
                   node.address(),
                   ", span ",
                   SpanText(span.first_layer, span.last_layer),
                   request.auto_span() ? " (chosen)" : " (asked)"));

  v1::JoinResponse response;
  response.set_node_id(id);
  response.set_first_layer(span.first_layer);
  response.set_last_layer(span.last_layer);
  response.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(options_.heartbeat_interval));
  response.set_ttl_ms(absl::ToInt64Milliseconds(options_.ttl));
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> Registry::Heartbeat(const v1::HeartbeatRequest& request) {
  const std::string& id = request.node_id();
  if (id.empty()) return absl::InvalidArgumentError("heartbeat without node_id");
  RETURN_IF_ERROR(CheckText("node_id", id, kMaxIdBytes));
  if (request.rtts_size() > kMaxRtts) {
    return absl::InvalidArgumentError(
        StrCat("heartbeat carries ", request.rtts_size(), " RTTs; at most ", kMaxRtts));
  }
  const v1::NodeState state =
      request.state() == v1::NODE_STATE_UNSPECIFIED ? v1::NODE_STATE_ONLINE : request.state();
  const bool has_span = request.last_layer() > request.first_layer();
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);

  v1::HeartbeatResponse response;
  auto it = members_.find(id);
  if (it == members_.end() && !request.has_node()) {
    response.set_known(false);
    return response;
  }
  if (request.has_node()) {
    RETURN_IF_ERROR(ValidateDescriptor(request.node()));
    if (!request.node().node_id().empty() && request.node().node_id() != id) {
      return absl::InvalidArgumentError(StrCat(
          "heartbeat from '", id, "' carries the descriptor of '", request.node().node_id(), "'"));
    }
    RETURN_IF_ERROR(CheckModelLocked(request.node()));
  }
  const int num_layers = request.has_node() ? request.node().num_layers() : num_layers_;
  if (has_span && (request.first_layer() < 0 || request.last_layer() > num_layers)) {
    return absl::InvalidArgumentError(StrCat("span ",
                                             SpanText(request.first_layer(), request.last_layer()),
                                             " is outside the model's [0, ",
                                             num_layers,
                                             ") layers"));
  }

  if (it == members_.end()) {
    // Re-registration after a coordinator restart.
    if (!has_span) {
      return absl::InvalidArgumentError("re-registration needs the served span in the heartbeat");
    }
    RETURN_IF_ERROR(CheckRoomLocked(id, request.node().address()));
    AdoptModelLocked(request.node());
    Member member;
    member.descriptor = request.node();
    member.descriptor.set_node_id(id);
    member.state = state;
    member.first_layer = request.first_layer();
    member.last_layer = request.last_layer();
    member.joined = now;
    InsertLocked(id, std::move(member));
    it = members_.find(id);
    LogLocked(now,
              "register",
              id,
              StrCat("re-registered from a heartbeat at ",
                     request.node().address(),
                     ", span ",
                     SpanText(request.first_layer(), request.last_layer())));
  } else if (request.has_node()) {
    it->second.descriptor = request.node();
    it->second.descriptor.set_node_id(id);
  }

  Member& m = it->second;
  if (m.state != state) {
    LogLocked(now, "state", id, StrCat(StateName(m.state), " -> ", StateName(state)));
    m.online_since = state == v1::NODE_STATE_ONLINE ? now : absl::InfiniteFuture();
  } else if (state == v1::NODE_STATE_ONLINE && m.online_since == absl::InfiniteFuture()) {
    m.online_since = now;
  }
  if (has_span &&
      (request.first_layer() != m.first_layer || request.last_layer() != m.last_layer)) {
    LogLocked(now,
              "move",
              id,
              StrCat("span ",
                     SpanText(m.first_layer, m.last_layer),
                     " -> ",
                     SpanText(request.first_layer(), request.last_layer())));
  }
  m.state = state;
  if (has_span) {
    m.first_layer = request.first_layer();
    m.last_layer = request.last_layer();
  }
  m.load = request.load();
  m.rtts.assign(request.rtts().begin(), request.rtts().end());
  m.last_heartbeat = now;
  response.set_known(true);
  MaybeMoveLocked(id, m, now, response);
  return response;
}

void Registry::MaybeMoveLocked(const std::string& id,
                               Member& m,
                               absl::Time now,
                               v1::HeartbeatResponse& response) {
  if (!options_.moves || !m.descriptor.movable()) return;
  if (m.move_to) {
    const bool arrived = m.first_layer == m.move_to->first_layer &&
                         m.last_layer == m.move_to->last_layer && m.state == v1::NODE_STATE_ONLINE;
    if (arrived || now - m.move_ordered > options_.move_timeout) {
      if (!arrived) LogLocked(now, "move", id, "gave up waiting for the ordered move");
      m.move_to.reset();
      return;
    }
    // Repeat the order until the node reports the new span (heartbeats may be lost).
    response.set_move(true);
    response.set_move_first_layer(m.move_to->first_layer);
    response.set_move_last_layer(m.move_to->last_layer);
    return;
  }
  if (m.state != v1::NODE_STATE_ONLINE || now - m.online_since < options_.settle) return;
  std::vector<std::pair<std::string, LayerRange>> pending;
  for (const auto& [other, member] : members_) {
    if (member.move_to) pending.emplace_back(other, *member.move_to);
  }
  v1::SwarmSnapshot snap = SnapshotLocked(now, "", "", /*with_events=*/false);
  const bool gaps = snap.uncovered_layers_size() > 0;
  // One move at a time unless layers are missing (a repair may not wait for a rebalance).
  if (!pending.empty() && !gaps) return;
  MoveOptions mo;
  mo.balance_quality = options_.balance_quality;
  std::optional<LayerRange> target = PlanMove(snap, id, pending, mo);
  if (!target) return;
  m.move_to = target;
  m.move_ordered = now;
  LogLocked(now,
            gaps ? "repair" : "rebalance",
            id,
            StrCat("ordered to move from ",
                   SpanText(m.first_layer, m.last_layer),
                   " to ",
                   SpanText(target->first_layer, target->last_layer)));
  response.set_move(true);
  response.set_move_first_layer(target->first_layer);
  response.set_move_last_layer(target->last_layer);
}

absl::Status Registry::Leave(const v1::LeaveRequest& request) {
  if (request.node_id().empty()) return absl::InvalidArgumentError("leave without node_id");
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  if (!members_.contains(request.node_id())) return absl::OkStatus();
  RemoveLocked(request.node_id());
  LogLocked(now, "leave", request.node_id(), "left");
  return absl::OkStatus();
}

absl::Status Registry::ReportFailure(const v1::FailureReport& report) {
  if (report.node_id().empty()) return absl::InvalidArgumentError("failure report without node_id");
  const std::string reason = report.reason().substr(0, kMaxTextBytes);
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  auto it = members_.find(report.node_id());
  if (it == members_.end()) {
    return absl::NotFoundError(StrCat("node '", report.node_id(), "' is not a member"));
  }
  Member& m = it->second;
  const std::string what =
      StrCat(reason.empty() ? "failed" : reason, " (code ", report.code(), ")");
  if (now < m.banned_until) {
    // Same incident, seen by another client: no escalation.
    LogLocked(now,
              "failure",
              m.descriptor.node_id(),
              StrCat(what, "; already banned for ", DurationText(m.banned_until - now)));
    return absl::OkStatus();
  }
  if (m.failures > 0 && now >= m.banned_until + options_.failure_reset) m.failures = 0;
  ++m.failures;
  absl::Duration ban = options_.failure_ban_base;
  for (int i = 1; i < m.failures && ban < options_.failure_ban_max; ++i) ban *= 2;
  ban = std::min(ban, options_.failure_ban_max);
  m.banned_until = now + ban;
  LogLocked(now,
            "failure",
            m.descriptor.node_id(),
            StrCat(what, "; banned from routing for ", DurationText(ban)));
  return absl::OkStatus();
}

v1::SwarmSnapshot Registry::Snapshot(bool with_events) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  ExpireLocked(now);
  return SnapshotLocked(now, "", "", with_events);
}

void Registry::ExpireLocked(absl::Time now) {
  std::vector<std::string> expired;
  for (const auto& [id, m] : members_) {
    if (now - m.last_heartbeat > options_.ttl) expired.push_back(id);
  }
  for (const std::string& id : expired) {
    const absl::Time last = members_.at(id).last_heartbeat;
    RemoveLocked(id);
    LogLocked(
        last + options_.ttl, "expire", id, StrCat("no heartbeat for ", DurationText(options_.ttl)));
  }
}

absl::Status Registry::CheckModelLocked(const v1::NodeDescriptor& node) const {
  if (!model_id_.empty() && node.model_id() != model_id_) {
    return absl::FailedPreconditionError(StrCat("model mismatch: the node serves '",
                                                node.model_id(),
                                                "', this swarm runs '",
                                                model_id_,
                                                "'"));
  }
  if (num_layers_ > 0 && node.num_layers() != num_layers_) {
    return absl::FailedPreconditionError(StrCat("layer count mismatch: the node's model has ",
                                                node.num_layers(),
                                                " layers, this swarm's has ",
                                                num_layers_));
  }
  return absl::OkStatus();
}

absl::Status Registry::CheckRoomLocked(const std::string& id, const std::string& address) const {
  if (static_cast<int>(members_.size()) < options_.max_nodes || members_.contains(id)) {
    return absl::OkStatus();
  }
  for (const auto& [other_id, other] : members_) {
    if (other.descriptor.address() == address) return absl::OkStatus();  // a replacement
  }
  return absl::ResourceExhaustedError(
      StrCat("the swarm is full: ", members_.size(), " nodes, the coordinator's limit"));
}

void Registry::AdoptModelLocked(const v1::NodeDescriptor& node) {
  if (model_id_.empty()) model_id_ = node.model_id();
  if (num_layers_ == 0) num_layers_ = node.num_layers();
}

void Registry::InsertLocked(const std::string& id, Member member) {
  std::vector<std::string> same_address;
  for (const auto& [other_id, other] : members_) {
    if (other_id != id && other.descriptor.address() == member.descriptor.address()) {
      same_address.push_back(other_id);
    }
  }
  for (const std::string& other_id : same_address) {
    members_.erase(other_id);
    LogLocked(member.joined,
              "leave",
              other_id,
              StrCat("replaced by '", id, "' at the same address ", member.descriptor.address()));
  }
  if (auto old = members_.find(id); old != members_.end()) {
    member.failures = old->second.failures;
    member.banned_until = old->second.banned_until;
  }
  members_[id] = std::move(member);
}

void Registry::RemoveLocked(const std::string& id) {
  members_.erase(id);
  if (members_.empty()) {
    model_id_ = options_.model_id;
    num_layers_ = 0;
  }
}

std::string Registry::NewIdLocked() {
  for (;;) {
    const uint64_t r = absl::Uniform<uint64_t>(id_gen_, 0, uint64_t{1} << 48);
    std::string id = absl::StrCat("node-", absl::Hex(r, absl::kZeroPad12));
    if (!members_.contains(id)) return id;
  }
}

void Registry::LogLocked(absl::Time when,
                         std::string kind,
                         std::string node_id,
                         std::string detail) {
  v1::SwarmEvent event;
  event.set_unix_ms(UnixMs(when));
  event.set_kind(std::move(kind));
  event.set_node_id(std::move(node_id));
  event.set_detail(std::move(detail));
  events_.push_back(std::move(event));
  while (static_cast<int>(events_.size()) > std::max(options_.max_events, 0)) events_.pop_front();
}

v1::SwarmSnapshot Registry::SnapshotLocked(absl::Time now,
                                           const std::string& skip_id,
                                           const std::string& skip_address,
                                           bool with_events) const {
  v1::SwarmSnapshot snap;
  snap.set_model_id(model_id_);
  snap.set_num_layers(num_layers_);
  snap.set_unix_ms(UnixMs(now));

  std::vector<const Member*> order;
  for (const auto& [id, m] : members_) {
    if (id == skip_id || (!skip_address.empty() && m.descriptor.address() == skip_address)) {
      continue;
    }
    order.push_back(&m);
  }
  std::stable_sort(order.begin(), order.end(), [](const Member* a, const Member* b) {
    return a->first_layer < b->first_layer;
  });
  for (const Member* m : order) {
    v1::NodeStatus* n = snap.add_nodes();
    *n->mutable_node() = m->descriptor;
    n->set_state(m->state);
    n->set_first_layer(m->first_layer);
    n->set_last_layer(m->last_layer);
    *n->mutable_load() = m->load;
    for (const v1::PeerRtt& rtt : m->rtts) *n->add_rtts() = rtt;
    n->set_joined_unix_ms(UnixMs(m->joined));
    n->set_last_heartbeat_unix_ms(UnixMs(m->last_heartbeat));
    n->set_throughput(NodeThroughput(m->descriptor.layer_ms(), m->last_layer - m->first_layer));
    n->set_banned_until_unix_ms(m->banned_until > now ? UnixMs(m->banned_until) : 0);
    n->set_failures(m->failures);
  }

  const std::vector<double> throughput = LayerThroughput(snap);
  for (int layer = 0; layer < static_cast<int>(throughput.size()); ++layer) {
    v1::LayerCoverage* c = snap.add_coverage();
    c->set_layer(layer);
    c->set_throughput(throughput[layer]);
    for (const v1::NodeStatus& n : snap.nodes()) {
      if ((n.state() == v1::NODE_STATE_JOINING || n.state() == v1::NODE_STATE_ONLINE) &&
          n.first_layer() <= layer && layer < n.last_layer()) {
        c->add_node_ids(n.node().node_id());
      }
    }
    if (c->node_ids().empty()) snap.add_uncovered_layers(layer);
  }
  if (with_events) {
    for (const v1::SwarmEvent& e : events_) *snap.add_events() = e;
  }
  return snap;
}

}  // namespace strata::coordinator
