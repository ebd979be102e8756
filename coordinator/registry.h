// Swarm membership as soft state: a node is a member while its heartbeats arrive within a TTL.
//
// Thread-safe: all state sits behind one mutex, and every method does only quick in-memory work,
// so gRPC reactions and HTTP handlers call it directly. Time comes from an injected Clock, so
// tests drive expiry and bans with a FakeClock. Expiry is lazy: every call first drops the nodes
// whose last heartbeat is older than the TTL (their "expire" event carries the moment they
// expired, not the moment it was noticed).
//
// Rules a node implementation can rely on:
//  - Join checks the protocol version (FAILED_PRECONDITION naming both versions), the model id
//    and layer count (FAILED_PRECONDITION when they differ from the swarm's; the swarm's model is
//    `--model-id` when given, else the first node's, forgotten again when the swarm empties) and
//    the descriptor's fields (INVALID_ARGUMENT). An empty node_id gets a fresh "node-<hex>" id.
//    A join with a known id, or with the address of another member, replaces that record (a
//    restarted node); failure bans carry over to the new record of the same id.
//  - A joined node is JOINING (counted for coverage and span choice, not routable) until a
//    heartbeat reports another state. A heartbeat's state UNSPECIFIED reads as ONLINE.
//  - A heartbeat from an unknown id answers known=false; if it carries `node` (its descriptor),
//    the node is re-registered from it with the span and state the heartbeat reports: this is
//    how a restarted coordinator rebuilds membership without new joins.
//  - A heartbeat's span (first_layer, last_layer) replaces the recorded one when non-empty.
//  - Leave of an unknown id is OK (the node is gone either way); an empty id is INVALID_ARGUMENT.
//  - ReportFailure bans a node from routing for failure_ban_base (2 s), doubling with each
//    further report up to failure_ban_max (60 s); a node with no report for failure_reset after
//    its ban ended starts again from failure_ban_base. Reports that arrive while the node is
//    banned are logged but do not escalate (several clients seeing one outage is one failure).
//    Unknown id: NOT_FOUND.
//  - Coverage (in snapshots and for span choice) counts JOINING and ONLINE nodes: a layer being
//    loaded is not a gap to fill twice. Routing uses ONLINE nodes only.
//  - Node throughput = 1000 / (layer_ms x span length) tokens/s: the decode rate of one session
//    through the node, which is what a chain's step time is made of. batched_layer_ms (capacity
//    under many sessions) is kept in the descriptor but not used yet: mixing it in would rank
//    nodes by a regime a latency-bound swarm rarely runs in.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "coordinator/assignment.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::coordinator {

struct RegistryOptions {
  // The swarm's model; empty: the first node to join defines it.
  std::string model_id;
  // A node whose last heartbeat is older than this is dropped.
  absl::Duration ttl = absl::Seconds(6);
  // Told to nodes at join: how often to heartbeat.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Failure bans: first ban, cap, and the clean period (after a ban ends) that resets the count.
  absl::Duration failure_ban_base = absl::Seconds(2);
  absl::Duration failure_ban_max = absl::Seconds(60);
  absl::Duration failure_reset = absl::Seconds(60);
  // Events kept in the log (oldest dropped first).
  int max_events = 256;
  // Most members; a join beyond it is RESOURCE_EXHAUSTED (bounds routing work and memory).
  int max_nodes = 1000;
  // Moving running nodes (repair and rebalance; see PlanMove): off disables it. A node must have
  // been online this long before it is moved, and an ordered move is given up after move_timeout.
  bool moves = true;
  absl::Duration settle = absl::Seconds(2);
  absl::Duration move_timeout = absl::Seconds(90);
  double balance_quality = 0.75;
};

class Registry {
 public:
  // `clock` must outlive the registry.
  Registry(RegistryOptions options, Clock* clock);

  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::Status Leave(const v1::LeaveRequest& request);
  absl::Status ReportFailure(const v1::FailureReport& report);

  // A consistent copy of the swarm: nodes ordered by (first_layer, node_id), coverage of every
  // layer by JOINING/ONLINE nodes with summed throughput, uncovered layers, the event log (most
  // recent last; left out unless `with_events`) and the time of the snapshot.
  v1::SwarmSnapshot Snapshot(bool with_events = true);

  const RegistryOptions& options() const { return options_; }

 private:
  struct Member {
    v1::NodeDescriptor descriptor;
    v1::NodeState state = v1::NODE_STATE_JOINING;
    int first_layer = 0;
    int last_layer = 0;
    v1::NodeLoad load;
    std::vector<v1::PeerRtt> rtts;
    absl::Time joined;
    absl::Time last_heartbeat;
    // Failure reports since the node was last clean, and the ban they set.
    int failures = 0;
    absl::Time banned_until = absl::InfinitePast();
    // A move ordered through heartbeats, until the node reports the target span.
    std::optional<LayerRange> move_to;
    absl::Time move_ordered;
    absl::Time online_since = absl::InfiniteFuture();
  };
  // Orders a move for `m` (repair or rebalance) when one is due; fills `response`.
  void MaybeMoveLocked(const std::string& id,
                       Member& m,
                       absl::Time now,
                       v1::HeartbeatResponse& response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Drops members past the TTL, logging an "expire" event for each.
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks `node` against the swarm's model (any model matches while the swarm has none).
  absl::Status CheckModelLocked(const v1::NodeDescriptor& node) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED when a new member (not replacing `id` or `address`) would pass max_nodes.
  absl::Status CheckRoomLocked(const std::string& id, const std::string& address) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `node`'s model the swarm's when the swarm has none yet.
  void AdoptModelLocked(const v1::NodeDescriptor& node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Inserts `member` under `id`, replacing a record with the same id or address; keeps the ban
  // state of a replaced record with the same id.
  void InsertLocked(const std::string& id, Member member) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogLocked(absl::Time when, std::string kind, std::string node_id, std::string detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The snapshot; members with id `skip_id` or address `skip_address` (a node about to be
  // replaced) are left out, and so are the events unless `with_events`.
  v1::SwarmSnapshot SnapshotLocked(absl::Time now,
                                   const std::string& skip_id,
                                   const std::string& skip_address,
                                   bool with_events) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegistryOptions options_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  std::string model_id_ ABSL_GUARDED_BY(mu_);
  int num_layers_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::SwarmEvent> events_ ABSL_GUARDED_BY(mu_);
  absl::BitGen id_gen_ ABSL_GUARDED_BY(mu_);
};

// Checks a node descriptor's fields (lengths, layer counts, measurements): INVALID_ARGUMENT.
absl::Status ValidateDescriptor(const v1::NodeDescriptor& node);

}  // namespace strata::coordinator
