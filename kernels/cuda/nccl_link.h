// NCCL for GPU nodes: (a) a tensor-parallel group over several local GPUs of one node, (b) a link
// carrying activations between two node processes on one host. gRPC stays the control plane: the
// caller exchanges the NcclId bytes over it and falls back to gRPC for the data whenever anything
// here fails.
//
// libnccl is opened at run time (dlopen "libnccl.so.2", then the path found at build time), so a
// binary built with STRATA_CUDA starts on machines without NCCL; every entry point then returns
// UNAVAILABLE naming what is missing.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::kernels::cuda {

// Loads NCCL if needed and returns its version, e.g. "2.28.3"; UNAVAILABLE when the library
// cannot be opened or lacks a symbol.
absl::StatusOr<std::string> NcclVersion();

// The rendezvous id of a communicator (ncclUniqueId, 128 bytes), as bytes for the wire.
struct NcclId {
  static constexpr size_t kBytes = 128;
  std::array<uint8_t, kBytes> bytes{};

  // A fresh id (ncclGetUniqueId: it also opens the bootstrap listener of the creating side).
  static absl::StatusOr<NcclId> Create();
  std::string Serialize() const { return std::string(bytes.begin(), bytes.end()); }
  // INVALID_ARGUMENT unless `data` is exactly kBytes long.
  static absl::StatusOr<NcclId> Parse(std::string_view data);
};

// One communicator per local device, for a tensor-parallel span: each device holds a slice of
// the attention heads and FFN columns and the partial outputs of wo and ffn_down are combined.
class TensorParallelGroup {
 public:
  // ncclCommInitAll over `devices` (distinct, each present). UNAVAILABLE when NCCL is missing or
  // its initialisation fails.
  static absl::StatusOr<std::unique_ptr<TensorParallelGroup>> Create(std::vector<int> devices);
  ~TensorParallelGroup();
  TensorParallelGroup(const TensorParallelGroup&) = delete;
  TensorParallelGroup& operator=(const TensorParallelGroup&) = delete;

  int size() const { return static_cast<int>(devices_.size()); }
  const std::vector<int>& devices() const { return devices_; }

  // In-place sum over ranks of `count` floats: bufs[r] lives on devices()[r], work is queued on
  // streams[r]. NCCL picks its algorithm (and so its summation order) by message size, so the
  // result for one element may change with `count`: not batch-invariant.
  absl::Status AllReduceSum(std::span<float* const> bufs,
                            size_t count,
                            std::span<const cudaStream_t> streams);

  // Batch-invariant sum: every rank's `count` partial floats are gathered (an exact copy) into
  // gather[r] (size() * count floats on device r), then each device adds the parts in rank order
  // into out[r] (out += sum when accumulate). Each element's result depends only on its own
  // partials, whatever `count` is.
  absl::Status AllGatherSum(std::span<const float* const> partial,
                            std::span<float* const> gather,
                            std::span<float* const> out,
                            size_t count,
                            bool accumulate,
                            std::span<const cudaStream_t> streams);

 private:
  TensorParallelGroup() = default;
  std::vector<int> devices_;
  std::vector<void*> comms_;  // ncclComm_t
};

// A point-to-point link for hidden states [rows, n_embd] f32 between ranks of one communicator
// (normally two node processes on one host, one GPU each: rank 0 created the id, rank 1 got it
// over gRPC). Sends and receives are queued on the caller's stream.
class NcclLink {
 public:
  // Joins the communicator `id` as `rank` of `nranks` on `device`. Waits at most `timeout` for
  // the other ranks; on failure or timeout the half-made communicator is aborted and the status
  // is UNAVAILABLE / DEADLINE_EXCEEDED, so the caller falls back to gRPC.
  static absl::StatusOr<std::unique_ptr<NcclLink>> Connect(
      int device, const NcclId& id, int rank, int nranks, absl::Duration timeout);
  ~NcclLink();
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }

  // Queues a send of rows x n_embd floats at `data` (device memory) to `peer`.
  absl::Status Send(const float* data, int64_t rows, int64_t n_embd, int peer, cudaStream_t stream);
  // Queues a receive of rows x n_embd floats into `data` from `peer`.
  absl::Status Recv(float* data, int64_t rows, int64_t n_embd, int peer, cudaStream_t stream);
  // Waits for the work queued on `stream` (e.g. a Send or Recv), watching the communicator for
  // errors. After `timeout`, or once `*cancel` is set (any thread), the communicator is aborted
  // (the link is unusable afterwards) and DEADLINE_EXCEEDED / CANCELLED is returned; an NCCL or
  // CUDA error aborts it too.
  absl::Status Synchronize(cudaStream_t stream,
                           absl::Duration timeout,
                           const std::atomic<bool>* cancel = nullptr);
  // Aborts the communicator: queued and later operations fail. Idempotent.
  void Abort();
  bool aborted() const { return comm_ == nullptr; }
  // Both in one NCCL group (needed when a rank sends to itself, or to avoid ordering deadlocks).
  absl::Status SendRecv(const float* send,
                        int send_peer,
                        float* recv,
                        int recv_peer,
                        int64_t rows,
                        int64_t n_embd,
                        cudaStream_t stream);

 private:
  NcclLink() = default;
  absl::Status Wait(const char* what);
  void* comm_ = nullptr;  // ncclComm_t
  int device_ = 0, rank_ = 0, nranks_ = 0;
};

}  // namespace strata::kernels::cuda
