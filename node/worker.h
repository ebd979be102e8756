// The node's worker: one thread that owns the layer span, the KV memory and every session's
// state, so none of them need locks. Stream reactions post events to its bounded queue; it
// applies each session's ops in op_seq order, batches the forwards of all sessions that are ready
// into one pass, and sends results on (to the next hop, or back to the client).
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/thread_pool.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/span_backend.h"
#include "model/verify.h"
#include "node/links.h"
#include "strata/v1/node.pb.h"

namespace strata::node {

struct WorkerOptions {
  std::string node_id;
  size_t kv_bytes = size_t{1} << 30;  // KV memory cap for all sessions
  int max_sessions = 64;
  int max_batch_rows = 512;  // rows of one batched pass (a larger op runs alone)
  int max_rows_per_op = 8192;
  size_t max_queue = 4096;  // events waiting for the worker
  absl::Duration idle_timeout = absl::Minutes(10);
  // How long a push stream from the previous hop may wait for its session's open: a client sends
  // its first op without waiting for the opens, so the previous hop can be ahead of it.
  absl::Duration push_before_open = absl::Seconds(3);
  Clock* clock = Clock::Real();
  // Threads of the model's head for last-hop verification (0: one per core).
  int verify_threads = 0;
  // Called on the worker thread after every batched pass with its compute time (metrics).
  std::function<void(absl::Duration)> on_batch;
};

// Counters readable from any thread (heartbeats, Info, the status line).
struct WorkerStats {
  std::atomic<int> active_sessions{0};
  std::atomic<int> queue_depth{0};
  std::atomic<int64_t> kv_used_bytes{0};
  std::atomic<int64_t> kv_capacity_bytes{0};
  std::atomic<int64_t> total_rows{0};
  std::atomic<int64_t> total_batches{0};
  std::atomic<int64_t> batched_sessions{0};  // sum over batches of sessions in the batch
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> verified_runs{0};  // forwards this node verified as the last hop
  std::atomic<double> last_batch_ms{0};
};

// Cancelled runs per session, shared by the stream reactions (which cancel, on gRPC threads) and
// the worker (which checks before and while running a forward).
class CancelBoard {
 public:
  void Cancel(const std::string& session, uint64_t op_seq);
  // The flag of a run: already set when the run was cancelled before it started.
  std::shared_ptr<std::atomic<bool>> Flag(const std::string& session, uint64_t op_seq);
  // Forgets the runs of `session` before `op_seq` (applied), or all of them.
  void Forget(const std::string& session, uint64_t op_seq);
  void Drop(const std::string& session);

 private:
  absl::Mutex mu_;
  std::map<std::string, std::map<uint64_t, std::shared_ptr<std::atomic<bool>>>> flags_
      ABSL_GUARDED_BY(mu_);
};

// Makes the backend that runs layers [first, last) (a session may use part of the node's span).
using BackendFactory =
    std::function<absl::StatusOr<std::unique_ptr<model::SpanBackend>>(int first, int last)>;

class Worker {
 public:
  // `kv_pool` holds every session's KV and must suit the backends `backends` makes.
  Worker(std::shared_ptr<const model::Model> model,
         WorkerOptions options,
         DownstreamFactory downstream,
         BackendFactory backends,
         std::unique_ptr<model::KvPool> kv_pool);
  ~Worker();

  void Start();
  // Stops the thread; every open session is closed with UNAVAILABLE.
  void Stop();

  // Posted by stream reactions (any thread). Each returns false when the queue is full; the
  // caller then ends its stream with RESOURCE_EXHAUSTED.
  bool PostOpen(std::shared_ptr<ClientLink> client, v1::OpenSession open);
  bool PostClientOp(const std::string& session_id, v1::Op op);
  bool PostClientGone(const std::string& session_id);
  bool PostPushOpen(std::shared_ptr<UpstreamLink> upstream,
                    std::string session_id,
                    std::string token);
  bool PostPushOp(const std::string& session_id, const UpstreamLink* upstream, v1::Op op);
  // The previous hop offers a hand-off link on its push stream (posted after its PostPushOpen).
  // `answer` runs on the worker thread with whether the worker accepted that stream: the session
  // is open here, the token matched, and `upstream` is the session's push stream. It must not
  // block.
  bool PostPushOffer(const std::string& session_id,
                     const UpstreamLink* upstream,
                     std::function<void(bool accepted)> answer);
  // The previous hop closed its push stream (after PostPushOpen was accepted or refused).
  bool PostPushGone(const std::string& session_id, std::shared_ptr<UpstreamLink> upstream);
  // Out of band, from any thread: the client gives up on runs (takes effect at once).
  void Cancel(const std::string& session_id, uint64_t op_seq) {
    cancels_.Cancel(session_id, op_seq);
  }
  // The client asks for the session's KV state (answered on its stream, in order with its ops).
  bool PostStateRequest(const std::string& session_id);

  // New sessions are refused with UNAVAILABLE; running ones continue. When `notify`, every open
  // session's client is told to move (Draining) so that the node can leave without losing work.
  void SetDraining(bool draining, bool notify = false, std::string reason = "");
  // The span new sessions may use (thread-safe). Until it is set, every open is refused.
  void SetSpan(int first, int last) {
    first_layer_.store(first);
    last_layer_.store(last);
  }
  int first_layer() const { return first_layer_.load(); }
  int last_layer() const { return last_layer_.load(); }
  const WorkerStats& stats() const { return stats_; }
  const WorkerOptions& options() const { return options_; }
  // Floats per hidden-state row of the model.
  int hidden_size() const { return model_->hparams().n_embd; }
  // Next-hop addresses used recently (for RTT probes). Thread-safe.
  std::vector<std::string> RecentPeers() const;

 private:
  enum class Source { kClient, kPush };
  struct OpenEvent {
    std::shared_ptr<ClientLink> client;
    v1::OpenSession open;
  };
  struct OpEvent {
    std::string session_id;
    Source source;
    const UpstreamLink* upstream;
    v1::Op op;
  };
  struct ClientGoneEvent {
    std::string session_id;
  };
  struct PushOpenEvent {
    std::shared_ptr<UpstreamLink> upstream;
    std::string session_id, token;
  };
  struct DownstreamFailedEvent {
    std::string session_id;
    uint64_t generation;  // of the session's downstream link that failed
    absl::Status status;
  };
  struct PushOfferEvent {
    std::string session_id;
    const UpstreamLink* upstream;
    std::function<void(bool accepted)> answer;
  };
  struct PushGoneEvent {
    std::string session_id;
    std::shared_ptr<UpstreamLink> upstream;
  };
  struct DrainEvent {
    std::string reason;
  };
  struct StateEvent {
    std::string session_id;
  };
  using Event = std::variant<OpenEvent,
                             OpEvent,
                             ClientGoneEvent,
                             PushOpenEvent,
                             PushOfferEvent,
                             DownstreamFailedEvent,
                             PushGoneEvent,
                             DrainEvent,
                             StateEvent>;
  // A push stream that named a session not open here yet, with what came on it since, in order.
  struct HeldPush {
    PushOpenEvent open;
    std::vector<Event> behind;  // its ops and offers
    absl::Time deadline;
  };

  struct Session {
    v1::OpenSession open;
    std::shared_ptr<ClientLink> client;
    std::shared_ptr<UpstreamLink> upstream;
    std::shared_ptr<DownstreamLink> downstream;
    std::shared_ptr<model::SpanBackend> span;
    std::unique_ptr<model::KvCache> kv;
    std::deque<v1::Op> ops;  // received in order, not yet applied
    uint64_t next_op = 1;
    bool failed = false;    // an op failed here; the session only accepts closing now
    bool detached = false;  // the next hop was lost: outputs are dropped until a Redirect
    std::string next_address, next_session_id, next_token;
    uint64_t downstream_generation = 0;
    absl::Time last_active;
  };

  // One forward of a batch: its session, op and rows, and where its rows sit in the batch's
  // hidden states.
  struct ForwardItem {
    std::string id;
    Session* s;
    v1::Op op;
    std::vector<model::Row> rows;
    size_t offset;  // first float of its rows in the batch's hidden states
    std::shared_ptr<std::atomic<bool>> cancel;
    bool cancelled = false;
  };

  // The worker thread, its queue and the events (worker.cc).
  bool Post(Event event);
  void Loop();
  void Handle(Event& event);
  void HandleOpen(OpenEvent& e);
  // Why a session cannot be opened as `o` asks (OK when it can).
  absl::Status CheckOpen(const v1::OpenSession& o);
  void HandleOp(OpEvent& e);
  void HandlePushOpen(PushOpenEvent& e);
  void HandlePushOffer(PushOfferEvent& e);
  void HandlePushGone(PushGoneEvent& e);
  void HandleDownstreamFailed(DownstreamFailedEvent& e);
  void HandleStateRequest(const StateEvent& e);
  void HandleDrain(const DrainEvent& e);
  // Keeps an event of a held push stream behind its open; false for any other event.
  bool HoldBehindPush(Event& event);
  // The session opened: its held push stream is taken as if it came now, then what came on it.
  void ReleaseHeldPush(const std::string& session_id);
  // Refuses a held push stream (its offers are declined, its ops dropped).
  void DropHeldPush(const std::string& session_id, const absl::Status& status);
  void CloseSession(const std::string& id, absl::Status status);

  // Applying ready ops and batching forwards (worker_ops.cc).
  // Applies ready non-forward ops and runs batches until nothing is ready.
  void RunReady();
  void ApplyControlOp(const std::string& id, Session& s, const v1::Op& op);
  void RunForwards(std::vector<std::pair<std::string, Session*>>& batch);
  // Takes the next op (a forward) of every session in `batch`, decoding its rows onto `hidden`;
  // cancelled runs are passed on and invalid ones fail, alone.
  std::vector<ForwardItem> TakeForwards(std::vector<std::pair<std::string, Session*>>& batch,
                                        std::vector<float>* hidden);
  // Runs `group` (sessions over one layer range, rows contiguous in `hidden`) as one pass and
  // delivers each forward's result.
  void RunGroup(std::span<ForwardItem> group, std::vector<float>& hidden);
  void DeliverForward(const std::string& id,
                      Session& s,
                      const v1::Op& op,
                      const float* hidden,
                      int64_t rows,
                      double compute_ms);
  // Last-hop verification of forward `f` from its final hidden states (`rows` of them): the
  // tokens it decides, or INVALID_ARGUMENT for a verification that cannot be done.
  absl::StatusOr<std::vector<int32_t>> Verify(const v1::Forward& f,
                                              const float* hidden,
                                              int64_t rows);
  // A cancelled run: passed on without outputs (so later hops keep the op order), answered
  // CANCELLED by the last hop.
  void DeliverCancelled(const std::string& id, Session& s, const v1::Op& op);
  void PassOn(const std::string& id, Session& s, v1::Op op);
  void ApplyRedirect(const std::string& id, Session& s, const v1::Op& op);
  void FailOp(Session& s, uint64_t op_seq, const absl::Status& status, bool poison);
  void ExpireIdle();
  void UpdateStats();
  absl::StatusOr<std::shared_ptr<model::SpanBackend>> SpanFor(int first, int last);

  std::shared_ptr<const model::Model> model_;
  WorkerOptions options_;
  DownstreamFactory downstream_factory_;
  BackendFactory backend_factory_;
  std::unique_ptr<model::KvPool> kv_pool_;
  std::map<std::pair<int, int>, std::shared_ptr<model::SpanBackend>> spans_;
  std::unique_ptr<ThreadPool> verify_pool_;  // made with the verifier, on first use
  std::unique_ptr<model::Verifier> verifier_;
  CancelBoard cancels_;
  std::map<std::string, Session> sessions_;      // worker thread only
  std::map<std::string, HeldPush> held_pushes_;  // by session id; worker thread only
  WorkerStats stats_;
  std::atomic<bool> draining_{false};
  std::atomic<int> first_layer_{0};
  std::atomic<int> last_layer_{0};

  absl::Mutex mu_;
  std::vector<Event> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started by Start, joined by Stop (the owner's calls, not the worker's)

  mutable absl::Mutex peers_mu_;
  std::map<std::string, absl::Time> peers_ ABSL_GUARDED_BY(peers_mu_);
};

}  // namespace strata::node
