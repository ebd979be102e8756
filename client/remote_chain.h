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

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/chain.h"
#include "client/hop_stream.h"
#include "strata/v1/coordinator.pb.h"

namespace strata::client {

struct RemoteChainOptions {
  std::string model_id;
  int hidden_size = 0;
  int max_length = 0;                          // 0: the model's context length
  v1::DType wire_dtype = v1::DTYPE_F32;        // hidden states between hops (f32: lossless)
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

  absl::Status Forward(std::span<const model::Row> rows, const float* hidden,
                       std::span<const int32_t> out_rows, float* out) override;
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override;
  absl::Status Commit(model::SeqId seq, int32_t until_pos) override;
  std::vector<HopInfo> Hops() const override;
  absl::StatusOr<uint64_t> SubmitRun(std::span<const model::Row> rows, const float* hidden,
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
  struct Hop;
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
    int seq = 0, from_pos = 0;     // truncate (seq, from), keep (seq), commit (seq, until)
    bool completed = false;        // answered
    bool abandoned = false;        // in flight when the route failed
    absl::Time sent;
    v1::Op op;                     // until answered, for a resend
    int64_t out_rows = 0;          // runs: rows the last hop returns
    Reply reply;
  };
  struct Cell {
    int32_t pos;
    model::SeqMask seqs;
    const float* hidden;
  };
  struct Failure {
    int hop = -1;           // index of the failed hop in hops_
    absl::Status status;
    bool report = true;     // a real failure (not a graceful departure)
  };

  RemoteChain() = default;
  // Waits for run `run` (a forward sent by SubmitRun or SubmitVerifiedRun) and collects the
  // control ops answered before it.
  absl::StatusOr<v1::ForwardResult> AwaitRun(uint64_t run);
  // Opens sessions for `route` as hops [first_index, ...) of this chain, starting at op
  // `first_op_seq`. Returns the new hops (not yet added) once all accepted, or, without
  // `wait_for_opens`, at once (ops may follow the opens; Await watches for their answers).
  absl::StatusOr<std::vector<std::unique_ptr<Hop>>> OpenHops(const v1::Route& route,
                                                             int first_index,
                                                             uint64_t first_op_seq,
                                                             bool first_from_client,
                                                             bool wait_for_opens = true);
  void OnMessage(Hop* hop, const v1::SessionResponse* message, const grpc::Status& end);
  // Sends `op` (op_seq assigned here), with failover; the forward's input rows and hidden
  // states at boundary 0 come with it.
  absl::StatusOr<v1::ForwardResult> RunOp(v1::Op op, std::vector<model::Row> rows,
                                          std::vector<float> hidden);
  // Waits for the reply to `seq` sent to hop 0; a failure names the hop to replace.
  std::variant<v1::ForwardResult, Failure> Await(uint64_t seq, int64_t rows,
                                                 std::unique_lock<std::mutex>& lock,
                                                 Reply* reply, size_t first_hop = 0);
  absl::Status Failover(Failure failure, const std::vector<uint64_t>& abandoned);
  // Opens the session over a route from layer 0 (hops_ must be empty), trying alternates;
  // `refused` is why an earlier route was dropped (reported if no other route is found).
  absl::Status OpenRoute(bool wait_for_opens, absl::Status refused = absl::OkStatus());
  // A hop refused the session before any op was answered: drops the route, opens another.
  absl::Status Reopen(const Failure& failure);
  // The cells the KV of the hop starting at `boundary` must hold, from the inputs kept for it;
  // nullopt when an input is missing.
  std::optional<std::vector<Cell>> History(int boundary) const;
  absl::Duration StepDeadline(int64_t rows) const;
  void Learn(int64_t rows, double ms);
  static bool Retryable(const absl::Status& status);
  void ReapControl();

  RemoteChainOptions options_;
  std::vector<std::unique_ptr<Hop>> hops_;  // the current route
  std::vector<std::unique_ptr<Hop>> closing_;  // the route once EndWrites took it
  uint64_t next_op_ = 1;
  bool answered_any_ = false;  // guarded by mu_: an op was answered (every hop had opened)
  // Nodes that failed this chain, avoided until a back-off that doubles with each failure
  // (kBanBase, 2 kBanBase, ... up to kBanMax) has passed.
  struct Ban {
    int failures = 0;
    absl::Time until;
  };
  std::map<std::string, Ban> bans_;  // guarded by mu_
  void BanLocked(const std::string& node_id);
  std::vector<std::string> ExcludedLocked() const;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, OpRecord> log_;        // every op sent, by op_seq
  // Inputs of forwards at each boundary layer: boundary -> op_seq -> rows x hidden floats.
  std::map<int, std::map<uint64_t, std::vector<float>>> inputs_;
  // A replay's inputs at a boundary stand for every op before it: boundary -> op_seq.
  std::map<int, uint64_t> snapshot_seq_;
  std::map<uint64_t, std::vector<model::Row>> snapshot_rows_;
  ChainStats stats_;
  uint64_t replay_seq_ = 0;     // a replay in flight (its replies come from the new hops)
  int replay_first_hop_ = -1;
  Reply replay_reply_;
  double ema_base_ms_ = -1, ema_row_ms_ = -1;
  model::SeqMask spec_seqs_ = 0;  // sequences other than 0 ever used (speculation)
  std::vector<uint64_t> pending_control_;  // async control ops not yet reaped
  bool closed_ = false;
};

// Closes chains on a thread of its own: a request returns as soon as its last token is known,
// rather than after every hop has acknowledged the end of its stream.
class ChainCloser {
 public:
  ChainCloser();
  ~ChainCloser();  // closes the chains still queued

  // Half-closes `chain` now (its hops free the session as soon as the message arrives) and
  // waits for the hops' acknowledgements in the background.
  void Close(std::unique_ptr<RemoteChain> chain);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<RemoteChain>> queue_;  // guarded by mu_
  bool stop_ = false;                               // guarded by mu_
  std::thread thread_;
};

// 128 random bits as 32 hex digits.
std::string RandomHex128();

}  // namespace strata::client
