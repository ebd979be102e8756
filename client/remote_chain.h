// A Chain over a route of remote nodes. The client opens a Session stream to every hop and sends
// ops to the first; hidden states then flow node to node, and the last hop answers. The chain
// keeps every boundary copy the intermediate hops send (the inputs of each span boundary), which
// is what failover replays.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/chain.h"
#include "strata/v1/coordinator.pb.h"
#include "strata/v1/node.grpc.pb.h"

namespace strata::client {

struct RemoteChainOptions {
  std::string model_id;
  int hidden_size = 0;
  int max_length = 0;                          // 0: the model's context length
  v1::DType wire_dtype = v1::DTYPE_F32;        // hidden states between hops (f32: lossless)
  bool boundary_copies = true;                 // ask hops for the inputs of each boundary
  absl::Duration open_timeout = absl::Seconds(10);
  absl::Duration step_timeout = absl::Seconds(60);
};

// A failure on a hop: which one, and the status it reported.
struct HopFailure {
  int hop = -1;  // index into the route; -1 when unknown
  absl::Status status;
};

class RemoteChain : public Chain {
 public:
  // Opens the session on every hop of `route`; fails if any hop refuses or times out.
  static absl::StatusOr<std::unique_ptr<RemoteChain>> Open(const v1::Route& route,
                                                           const RemoteChainOptions& options);
  ~RemoteChain() override;

  absl::Status Forward(std::span<const model::Row> rows, const float* hidden,
                       std::span<const int32_t> out_rows, float* out) override;
  absl::Status Truncate(model::SeqId seq, int32_t from_pos) override;
  std::vector<HopInfo> Hops() const override;

  const v1::Route& route() const { return route_; }
  // The hop that caused the last error (for failover and for reporting it).
  HopFailure last_failure() const;
  // Ends every stream.
  void Close();

 private:
  struct Hop {
    v1::Hop hop;
    std::unique_ptr<v1::Node::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream;
    std::thread reader;
    bool opened = false;     // guarded by mu_
    bool ended = false;      // guarded by mu_
    absl::Status end_status; // guarded by mu_
  };
  struct Reply {
    bool done = false;
    absl::Status status;
    int hop = -1;
    v1::ForwardResult result;
  };

  RemoteChain() = default;
  void ReadLoop(int index);
  // Sends `op` to the first hop and waits for its reply from the last (or an error from any).
  absl::StatusOr<v1::ForwardResult> Run(v1::Op op);

  RemoteChainOptions options_;
  v1::Route route_;
  std::string session_id_;
  std::vector<std::unique_ptr<Hop>> hops_;
  uint64_t next_op_ = 1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Reply> replies_;  // guarded by mu_
  HopFailure failure_;                 // guarded by mu_
  // boundary layer -> (op_seq -> copy), guarded by mu_
  std::map<int, std::map<uint64_t, v1::BoundaryStates>> boundaries_;
  bool closed_ = false;
};

// 128 random bits as 32 hex digits.
std::string RandomHex128();

}  // namespace strata::client
