// A Chain over a route of remote nodes, surviving node failures.
//
// The client opens a Session stream to every hop and sends every op to the first; hidden states
// then flow node to node and the last hop answers. The first op follows the opens at once
// (nodes hold a push that comes before its session's open), so a request pays no round trip
// for opening. Intermediate hops send the client a copy of
// what they forwarded, so the client holds the input of every span boundary of its route.
//
// When a hop fails (its stream breaks, the hop before it loses it, it stops answering within the
// step deadline, or it announces that it is leaving), the chain keeps the hops before the failed
// one, asks the coordinator for a route over the remaining layers that avoids the failed node,
// opens sessions there, replays the inputs it holds for that boundary in one batched forward to
// rebuild their KV, re-points the last kept hop at the new ones, and sends the interrupted op
// again. Determinism makes the result identical to an uninterrupted run.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/chain.h"
#include "client/chain_closer.h"
#include "client/hop_stream.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::client {

struct RemoteChainOptions {
  std::string model_id;
  int hidden_size = 0;
  int max_length = 0;                    // 0: the model's context length
  v1::DType wire_dtype = v1::DTYPE_F32;  // hidden states between hops (f32: lossless)
  absl::Duration open_timeout = absl::Seconds(5);
  // Longest wait for one op before the route is considered stuck. The deadline actually used
  // follows measured step times (4x the expected time plus min_step_timeout), capped by this.
  absl::Duration step_timeout = absl::Seconds(60);
  absl::Duration min_step_timeout = absl::Seconds(2);
  int max_failovers_per_op = 8;
  // How long to keep asking for a route when no route exists before giving up.
  absl::Duration no_route_wait = absl::Seconds(20);
  // A route over layers [start_layer, L) avoiding `exclude` (node ids).
  std::function<absl::StatusOr<v1::RouteResponse>(int start_layer,
                                                  const std::vector<std::string>& exclude)>
      routes;
  // Tells the coordinators that a node failed this client (may be empty).
  std::function<void(const std::string& node_id, const absl::Status& why)> report_failure;
};

// Counters of one chain, for diagnostics and benchmarks.
struct ChainStats {
  int failovers = 0;
  double last_recovery_ms = 0;  // failure detected -> interrupted op answered
  double last_replay_ms = 0;    // of which: the replay forward
  int last_replay_rows = 0;
};

class RemoteChain : public Chain {
 public:
  static absl::StatusOr<std::unique_ptr<RemoteChain>> Open(const RemoteChainOptions& options);
  ~RemoteChain() override;

  absl::Status Forward(std::span<const model::Row> rows,
                       const float* hidden,
                       std::span<const int32_t> out_rows,
                       float* out) override;
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override;
  absl::Status Commit(model::SeqId seq, int32_t until_pos) override;
  std::vector<HopInfo> Hops() const override;
  absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows,
                                     const float* hidden,
                                     std::span<const int32_t> out_rows) override;
  absl::Status WaitRun(uint64_t run, float* out) override;
  absl::StatusOr<uint64_t> SubmitVerifiedRun(std::span<const model::Row> rows,
                                             const float* hidden,
                                             std::span<const int32_t> out_rows,
                                             const model::VerifySpec& verify) override;
  absl::Status WaitVerdict(uint64_t run, std::vector<int32_t>* tokens) override;
  bool RunReady(uint64_t run) override;
  void CancelRuns(std::span<const uint64_t> runs) override { Cancel(runs); }
  void TruncateAsync(model::SeqId seq, int32_t from_pos) override;
  void CommitAsync(model::SeqId seq, int32_t until_pos) override;

  ChainStats stats() const;
  // Half-closes every stream at once and returns: each hop ends its session once it has read
  // what was sent before. The chain takes no more ops.
  void EndWrites();
  // Ends every stream: EndWrites, then waits for each hop to end it (one round trip for all).
  void Close();

  // Asynchronous use (speculative decoding keeps several runs in flight):
  // Sends `op` now (its op_seq is assigned here and returned); a forward carries its rows and
  // its hidden states at boundary 0 (kept for failover).
  uint64_t Submit(v1::Op op, std::vector<model::Row> rows, std::vector<float> hidden);
  // Waits for op `seq`. When the route fails meanwhile, the chain fails over and every op then
  // in flight is abandoned (ABORTED) — speculation is disposable — unless `resend`, in which case
  // this op is sent again on the new route and awaited.
  absl::StatusOr<v1::ForwardResult> Wait(uint64_t seq, bool resend = false);
  // Gives up on runs (out of band, to every hop): they answer CANCELLED.
  void Cancel(std::span<const uint64_t> seqs);
  // Every hop's KV state (after the ops it has applied), first hop first.
  absl::StatusOr<std::vector<v1::SessionState>> State(absl::Duration timeout = absl::Seconds(10));

 private:
  // What a hop has told the chain. Touched only under mu_, through HeardFrom(), which the
  // analysis checks: an annotation on a field of Hop could not name the chain's mu_.
  struct Heard {
    bool opened = false;
    absl::Time open_deadline = absl::InfiniteFuture();  // for the answer to the open
    bool ended = false;
    absl::Status end_status;
    bool next_lost = false;                 // it lost its next hop
    uint64_t link_since = 0;                // op_seq from which its current next link counts
    bool draining = false;                  // it is leaving
    std::set<uint64_t> copies;              // op_seqs it sent boundary copies for
    std::optional<v1::SessionState> state;  // the last state it reported
  };
  // One hop of the current route and what it has told us. All but `heard` is set by OpenHops
  // and only read afterwards.
  struct Hop {
    v1::Hop hop;
    int index = 0;  // position in the route when opened
    std::string session_id, token;
    std::unique_ptr<HopStream> stream;
    Heard heard;  // only through HeardFrom()
  };
  // The answer to an op, once it arrived.
  struct Reply {
    bool done = false;
    absl::Status status;
    int hop = -1;  // Hop::index of the sender
    v1::ForwardResult result;
  };
  // An op as the history needs it.
  struct OpRecord {
    v1::Op::KindCase kind = v1::Op::KIND_NOT_SET;
    std::vector<model::Row> rows;  // forwards
    int64_t n_rows = 1;
    int seq = 0, from_pos = 0;  // truncate (seq, from), keep (seq), commit (seq, until)
    bool completed = false;     // answered
    bool abandoned = false;     // in flight when the route failed
    absl::Time sent;
    v1::Op op;             // until answered, for a resend
    int64_t out_rows = 0;  // runs: rows the last hop returns
    Reply reply;
  };
  struct Cell {
    int32_t pos;
    model::SeqMask seqs;
    const float* hidden;
  };
  struct Failure {
    int hop = -1;  // index of the failed hop in hops_
    absl::Status status;
    bool report = true;  // a real failure (not a graceful departure)
  };
  // An op the route failed under, and what the failover and a resend of it need.
  struct Interrupted {
    Failure failure;
    bool refused = false;             // a hop refused the session before any op was answered
    std::vector<uint64_t> abandoned;  // the ops in flight, abandoned by the failover
    v1::Op op;                        // the op again, with its rows and boundary-0 input
    std::vector<model::Row> rows;
    std::vector<float> hidden;
  };
  // Where a failover rebuilds the route from.
  struct Rebuild {
    int keep = 0;             // hops [0, keep) stay
    int boundary = 0;         // the first layer of the hops that replace the others
    std::vector<Cell> cells;  // the inputs held for `boundary` (the replay; none: no replay)
    std::string failed_id;    // the node that failed
  };

  RemoteChain() = default;

  // Opening and closing the session (remote_chain.cc).
  //
  // Opens the session over a route from layer 0 (hops_ must be empty), trying alternates;
  // `refused` is why an earlier route was dropped (reported if no other route is found).
  absl::Status OpenRoute(bool wait_for_opens, absl::Status refused = absl::OkStatus())
      ABSL_LOCKS_EXCLUDED(mu_);
  // A hop refused the session before any op was answered: drops the route, opens another.
  absl::Status Reopen(const Failure& failure) ABSL_LOCKS_EXCLUDED(mu_);
  // Opens sessions for `route` as hops [first_index, ...) of this chain, starting at op
  // `first_op_seq`. Returns the new hops (not yet added) once all accepted, or, without
  // `wait_for_opens`, at once (ops may follow the opens; Await watches for their answers).
  absl::StatusOr<std::vector<std::unique_ptr<Hop>>> OpenHops(const v1::Route& route,
                                                             int first_index,
                                                             uint64_t first_op_seq,
                                                             bool first_from_client,
                                                             bool wait_for_opens = true)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until `deadline` for each of `hops` to answer its open; the first that refused or did
  // not answer is the error (and is banned when another route may do).
  absl::Status AwaitOpens(const std::vector<std::unique_ptr<Hop>>& hops, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Everything a hop sends (on its reader thread); `message` null: the stream ended (`end`).
  void OnMessage(Hop* hop, const v1::SessionResponse* message, const grpc::Status& end)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnEnded(Hop* hop, const grpc::Status& end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Where the answer to `seq` from `hop` goes, or null. The replay and the Redirect share a
  // number in two domains (new hops / kept hops).
  Reply* ReplyFor(const Hop& hop, uint64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What the chain has heard from `hop`.
  Heard& HeardFrom(Hop& hop) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return hop.heard; }
  const Heard& HeardFrom(const Hop& hop) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return hop.heard;
  }

  // Sending ops and waiting for them (remote_chain_ops.cc).
  //
  // Waits for run `run` (a forward sent by SubmitRun or SubmitVerifiedRun) and collects the
  // control ops answered before it.
  absl::StatusOr<v1::ForwardResult> AwaitRun(uint64_t run);
  // Sends `op` (op_seq assigned here), with failover; the forward's input rows and hidden
  // states at boundary 0 come with it.
  absl::StatusOr<v1::ForwardResult> RunOp(v1::Op op,
                                          std::vector<model::Row> rows,
                                          std::vector<float> hidden);
  // The route failed (`failure`) while op `seq` was awaited: every op in flight is marked
  // abandoned, and what the failover and a resend of the op need is returned.
  Interrupted Interrupt(uint64_t seq, const Failure& failure) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for the reply to `seq` sent to hop 0; a failure names the hop to replace.
  std::variant<v1::ForwardResult, Failure> Await(uint64_t seq,
                                                 int64_t rows,
                                                 Reply* reply,
                                                 size_t first_hop = 0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `reply` arrived, or a hop ended or lost its next hop (`failure` then names it).
  bool Settled(const Reply& reply, Failure* failure) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A hop that has not answered its open within the open timeout.
  std::optional<Failure> OpenOverdue() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Op `seq` was not answered within `deadline`: the first hop from `first_hop` (where the op
  // entered) that did not pass it on is the culprit.
  Failure Stuck(uint64_t seq, size_t first_hop, absl::Duration deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on cv_ until `done()` holds or `deadline` passes; returns done(). mu_ is released
  // while waiting.
  template <typename Done>
  bool WaitUntil(absl::Time deadline, Done done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!done()) {
      if (cv_.WaitWithDeadline(&mu_, deadline)) return done();
    }
    return true;
  }
  absl::Duration StepDeadline(int64_t rows) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Learn(int64_t rows, double ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReapControl();

  // Failover (remote_chain_failover.cc).
  //
  // Replaces the hops from the failed one on and brings the new ones to the state of the kept
  // ones; the ops in `abandoned` were in flight when the route failed.
  absl::Status Failover(Failure failure, const std::vector<uint64_t>& abandoned)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Logs, bans and reports the failed node, picks the boundary to rebuild from (the failed hop's
  // first layer if the inputs there are held, else an earlier one) and drops the hops from there.
  Rebuild DropFailedHops(const Failure& failure) ABSL_LOCKS_EXCLUDED(mu_);
  // Finds a route over the layers from rebuild.boundary on and opens it as the hops after the
  // kept ones, their first op `first_seq`; retries with back-off until options_.no_route_wait.
  absl::Status OpenReplacement(const Rebuild& rebuild, uint64_t first_seq) ABSL_LOCKS_EXCLUDED(mu_);
  // Routes over the layers from `boundary` on that avoid the banned nodes, or, when there are
  // none, the failed node `failed_id` only, or none; `exclude` is set to what they avoid.
  absl::StatusOr<v1::RouteResponse> ReplacementRoutes(int boundary,
                                                      const std::string& failed_id,
                                                      std::vector<std::string>* exclude)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Rebuilds the new hops' KV from the inputs held for the boundary, in one forward (op `seq`).
  // Returns a failure that interrupted it.
  std::optional<Failure> Replay(const Rebuild& rebuild, uint64_t seq) ABSL_LOCKS_EXCLUDED(mu_);
  // Re-points the last kept hop at the new ones (op `seq`, ordered through the kept hops).
  // Returns a failure that interrupted it.
  std::optional<Failure> Redirect(int keep, uint64_t seq) ABSL_LOCKS_EXCLUDED(mu_);
  // Sends the interrupted truncates, keeps and commits among `abandoned` again.
  absl::Status ReissueControl(const std::vector<uint64_t>& abandoned) ABSL_LOCKS_EXCLUDED(mu_);
  // The kept hops drop whatever the `abandoned` forwards added, and any speculation.
  absl::Status RollBack(const std::vector<uint64_t>& abandoned) ABSL_LOCKS_EXCLUDED(mu_);
  // The cells the KV of the hop starting at `boundary` must hold, from the inputs kept for it;
  // nullopt when an input is missing.
  std::optional<std::vector<Cell>> History(int boundary) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static bool Retryable(const absl::Status& status);
  void BanLocked(const std::string& node_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> ExcludedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RemoteChainOptions options_;  // set by Open, then only read
  // Not guarded: only the thread that sends ops (the chain's user, and failover on it) touches
  // these two.
  uint64_t next_op_ = 1;
  std::vector<uint64_t> pending_control_;  // async control ops not yet reaped

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // signalled on every message from a hop
  // The current route. Changed only by the thread that sends ops, under mu_.
  std::vector<std::unique_ptr<Hop>> hops_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Hop>> closing_ ABSL_GUARDED_BY(mu_);  // the route EndWrites took
  bool answered_any_ ABSL_GUARDED_BY(mu_) = false;  // an op was answered (every hop had opened)
  // Nodes that failed this chain, avoided until a back-off that doubles with each failure
  // (kBanBase, 2 kBanBase, ... up to kBanMax) has passed.
  struct Ban {
    int failures = 0;
    absl::Time until;
  };
  std::map<std::string, Ban> bans_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, OpRecord> log_ ABSL_GUARDED_BY(mu_);  // every op sent, by op_seq
  // Inputs of forwards at each boundary layer: boundary -> op_seq -> rows x hidden floats.
  std::map<int, std::map<uint64_t, std::vector<float>>> inputs_ ABSL_GUARDED_BY(mu_);
  // A replay's inputs at a boundary stand for every op before it: boundary -> op_seq.
  std::map<int, uint64_t> snapshot_seq_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::vector<model::Row>> snapshot_rows_ ABSL_GUARDED_BY(mu_);
  ChainStats stats_ ABSL_GUARDED_BY(mu_);
  // A replay in flight (its replies come from the new hops).
  uint64_t replay_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int replay_first_hop_ ABSL_GUARDED_BY(mu_) = -1;
  Reply replay_reply_ ABSL_GUARDED_BY(mu_);
  double ema_base_ms_ ABSL_GUARDED_BY(mu_) = -1;
  double ema_row_ms_ ABSL_GUARDED_BY(mu_) = -1;
  // Sequences other than 0 ever used (speculation).
  model::SeqMask spec_seqs_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// 128 random bits as 32 hex digits.
std::string RandomHex128();

}  // namespace strata::client
