#include "kernels/cuda/nccl_link.h"

#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/time/clock.h"
#include "common/status.h"
#include "common/strings.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"

namespace strata::kernels::cuda {
namespace {

// The NCCL entry points this file uses, resolved once from the shared library.
struct Nccl {
  decltype(&::ncclGetVersion) GetVersion = nullptr;
  decltype(&::ncclGetUniqueId) GetUniqueId = nullptr;
  decltype(&::ncclCommInitRankConfig) CommInitRankConfig = nullptr;
  decltype(&::ncclCommInitAll) CommInitAll = nullptr;
  decltype(&::ncclCommGetAsyncError) CommGetAsyncError = nullptr;
  decltype(&::ncclCommAbort) CommAbort = nullptr;
  decltype(&::ncclCommDestroy) CommDestroy = nullptr;
  decltype(&::ncclGetErrorString) GetErrorString = nullptr;
  decltype(&::ncclGetLastError) GetLastError = nullptr;
  decltype(&::ncclAllReduce) AllReduce = nullptr;
  decltype(&::ncclAllGather) AllGather = nullptr;
  decltype(&::ncclSend) Send = nullptr;
  decltype(&::ncclRecv) Recv = nullptr;
  decltype(&::ncclGroupStart) GroupStart = nullptr;
  decltype(&::ncclGroupEnd) GroupEnd = nullptr;
};

absl::StatusOr<const Nccl*> LoadNccl() {
  static absl::StatusOr<Nccl>* loaded = [] {
    std::vector<std::string> tried = {"libnccl.so.2", "libnccl.so"};
#ifdef STRATA_NCCL_LIBRARY
    tried.push_back(STRATA_NCCL_LIBRARY);
#endif
    void* lib = nullptr;
    std::string errors;
    for (const std::string& name : tried) {
      lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
      const char* e = dlerror();
      errors += StrCat(errors.empty() ? "" : "; ", e ? e : name);
    }
    if (lib == nullptr) {
      return new absl::StatusOr<Nccl>(
          absl::UnavailableError(StrCat("NCCL is not available (", errors, ")")));
    }
    Nccl n;
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (fn == nullptr) missing += StrCat(missing.empty() ? "" : ", ", name);
    };
    sym(n.GetVersion, "ncclGetVersion");
    sym(n.GetUniqueId, "ncclGetUniqueId");
    sym(n.CommInitRankConfig, "ncclCommInitRankConfig");
    sym(n.CommInitAll, "ncclCommInitAll");
    sym(n.CommGetAsyncError, "ncclCommGetAsyncError");
    sym(n.CommAbort, "ncclCommAbort");
    sym(n.CommDestroy, "ncclCommDestroy");
    sym(n.GetErrorString, "ncclGetErrorString");
    sym(n.GetLastError, "ncclGetLastError");
    sym(n.AllReduce, "ncclAllReduce");
    sym(n.AllGather, "ncclAllGather");
    sym(n.Send, "ncclSend");
    sym(n.Recv, "ncclRecv");
    sym(n.GroupStart, "ncclGroupStart");
    sym(n.GroupEnd, "ncclGroupEnd");
    if (!missing.empty()) {
      return new absl::StatusOr<Nccl>(
          absl::UnavailableError(StrCat("the NCCL library lacks ", missing)));
    }
    return new absl::StatusOr<Nccl>(n);
  }();
  if (!loaded->ok()) return loaded->status();
  return &loaded->value();
}

absl::Status NcclStatus(const Nccl& n,
                        ncclResult_t r,
                        std::string_view what,
                        ncclComm_t comm = nullptr) {
  if (r == ncclSuccess) return absl::OkStatus();
  const char* last = n.GetLastError(comm);
  const std::string msg = StrCat("NCCL ",
                                 what,
                                 ": ",
                                 n.GetErrorString(r),
                                 (last && *last) ? StrCat(" (", last, ")") : std::string());
  switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

ncclComm_t Comm(void* c) { return static_cast<ncclComm_t>(c); }

}  // namespace

absl::StatusOr<std::string> NcclVersion() {
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  int v = 0;
  RETURN_IF_ERROR(NcclStatus(*n, n->GetVersion(&v), "ncclGetVersion"));
  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z for versions >= 2.9.
  return StrCat(v / 10000, ".", (v / 100) % 100, ".", v % 100);
}

absl::StatusOr<NcclId> NcclId::Create() {
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  ncclUniqueId id;
  RETURN_IF_ERROR(NcclStatus(*n, n->GetUniqueId(&id), "ncclGetUniqueId"));
  static_assert(sizeof(id) == kBytes);
  NcclId out;
  std::memcpy(out.bytes.data(), &id, kBytes);
  return out;
}

absl::StatusOr<NcclId> NcclId::Parse(std::string_view data) {
  if (data.size() != kBytes) {
    return absl::InvalidArgumentError(
        StrCat("an NCCL id is ", kBytes, " bytes, got ", data.size()));
  }
  NcclId out;
  std::memcpy(out.bytes.data(), data.data(), kBytes);
  return out;
}

// --- TensorParallelGroup ---

absl::StatusOr<std::unique_ptr<TensorParallelGroup>> TensorParallelGroup::Create(
    std::vector<int> devices) {
  if (devices.empty()) return absl::InvalidArgumentError("tensor-parallel group of no devices");
  std::vector<int> sorted = devices;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError("a tensor-parallel group lists a device twice");
  }
  for (int d : devices) RETURN_IF_ERROR(UseDevice(d));
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  auto group = std::unique_ptr<TensorParallelGroup>(new TensorParallelGroup());
  group->devices_ = devices;
  std::vector<ncclComm_t> comms(devices.size());
  RETURN_IF_ERROR(
      NcclStatus(*n,
                 n->CommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()),
                 "ncclCommInitAll"));
  for (ncclComm_t c : comms) group->comms_.push_back(c);
  return group;
}

TensorParallelGroup::~TensorParallelGroup() {
  auto n = LoadNccl();
  if (!n.ok()) return;
  for (size_t r = 0; r < comms_.size(); ++r) {
    cudaSetDevice(devices_[r]);
    (*n)->CommDestroy(Comm(comms_[r]));
  }
}

absl::Status TensorParallelGroup::AllReduceSum(std::span<float* const> bufs,
                                               size_t count,
                                               std::span<const cudaStream_t> streams) {
  if (bufs.size() != devices_.size() || streams.size() != devices_.size()) {
    return absl::InvalidArgumentError("AllReduceSum: one buffer and one stream per rank");
  }
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  RETURN_IF_ERROR(NcclStatus(*n, n->GroupStart(), "ncclGroupStart"));
  absl::Status st;
  for (size_t r = 0; r < devices_.size() && st.ok(); ++r) {
    cudaSetDevice(devices_[r]);
    st = NcclStatus(
        *n,
        n->AllReduce(bufs[r], bufs[r], count, ncclFloat32, ncclSum, Comm(comms_[r]), streams[r]),
        "ncclAllReduce",
        Comm(comms_[r]));
  }
  const absl::Status end = NcclStatus(*n, n->GroupEnd(), "ncclGroupEnd");
  return st.ok() ? end : st;
}

absl::Status TensorParallelGroup::AllGatherSum(std::span<const float* const> partial,
                                               std::span<float* const> gather,
                                               std::span<float* const> out,
                                               size_t count,
                                               bool accumulate,
                                               std::span<const cudaStream_t> streams) {
  const size_t ranks = devices_.size();
  if (partial.size() != ranks || gather.size() != ranks || out.size() != ranks ||
      streams.size() != ranks) {
    return absl::InvalidArgumentError("AllGatherSum: one buffer of each kind per rank");
  }
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  if (ranks > 1) {
    RETURN_IF_ERROR(NcclStatus(*n, n->GroupStart(), "ncclGroupStart"));
    absl::Status st;
    for (size_t r = 0; r < ranks && st.ok(); ++r) {
      cudaSetDevice(devices_[r]);
      st = NcclStatus(
          *n,
          n->AllGather(partial[r], gather[r], count, ncclFloat32, Comm(comms_[r]), streams[r]),
          "ncclAllGather",
          Comm(comms_[r]));
    }
    const absl::Status end = NcclStatus(*n, n->GroupEnd(), "ncclGroupEnd");
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(end);
  }
  for (size_t r = 0; r < ranks; ++r) {
    cudaSetDevice(devices_[r]);
    // With one rank the gather is the partial itself.
    const float* in = ranks > 1 ? gather[r] : partial[r];
    RETURN_IF_ERROR(SumParts(
        in, static_cast<int>(ranks), static_cast<int64_t>(count), out[r], accumulate, streams[r]));
  }
  return absl::OkStatus();
}

// --- NcclLink ---

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Connect(
    int device, const NcclId& id, int rank, int nranks, absl::Duration timeout) {
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return absl::InvalidArgumentError(StrCat("NCCL rank ", rank, " of ", nranks));
  }
  RETURN_IF_ERROR(UseDevice(device));
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  ncclUniqueId uid;
  std::memcpy(&uid, id.bytes.data(), NcclId::kBytes);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so a missing peer cannot hang us: we poll with a deadline
  ncclComm_t comm = nullptr;
  ncclResult_t r = n->CommInitRankConfig(&comm, nranks, uid, rank, &config);
  const absl::Time deadline = absl::Now() + timeout;
  while (r == ncclInProgress) {
    if (absl::Now() > deadline) {
      if (comm != nullptr) n->CommAbort(comm);
      return absl::DeadlineExceededError(StrCat("NCCL link setup (rank ",
                                                rank,
                                                " of ",
                                                nranks,
                                                " on cuda:",
                                                device,
                                                ") timed out after ",
                                                absl::FormatDuration(timeout),
                                                "; use gRPC instead"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ncclResult_t state = ncclSuccess;
    const ncclResult_t q = n->CommGetAsyncError(comm, &state);
    r = q != ncclSuccess ? q : state;
  }
  if (r != ncclSuccess) {
    absl::Status st = NcclStatus(*n, r, "link setup", comm);
    if (comm != nullptr) n->CommAbort(comm);
    return absl::UnavailableError(StrCat(st.message(), "; use gRPC instead"));
  }
  auto link = std::unique_ptr<NcclLink>(new NcclLink());
  link->comm_ = comm;
  link->device_ = device;
  link->rank_ = rank;
  link->nranks_ = nranks;
  return link;
}

NcclLink::~NcclLink() {
  auto n = LoadNccl();
  if (!n.ok() || comm_ == nullptr) return;
  cudaSetDevice(device_);
  (*n)->CommDestroy(Comm(comm_));
}

absl::Status NcclLink::Wait(const char* what) {
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t q = n->CommGetAsyncError(Comm(comm_), &state);
    const ncclResult_t r = q != ncclSuccess ? q : state;
    if (r != ncclInProgress) return NcclStatus(*n, r, what, Comm(comm_));
    std::this_thread::yield();
  }
}

absl::Status NcclLink::Synchronize(cudaStream_t stream,
                                   absl::Duration timeout,
                                   const std::atomic<bool>* cancel) {
  if (comm_ == nullptr) return absl::UnavailableError("the NCCL link was aborted");
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  cudaSetDevice(device_);
  const absl::Time deadline = absl::Now() + timeout;
  for (int polls = 0;; ++polls) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) {
      Abort();
      return CudaStatus(q, "NCCL link stream");
    }
    ncclResult_t state = ncclSuccess;
    const ncclResult_t e = n->CommGetAsyncError(Comm(comm_), &state);
    const ncclResult_t r = e != ncclSuccess ? e : state;
    if (r != ncclSuccess && r != ncclInProgress) {
      absl::Status st = NcclStatus(*n, r, "link transfer", Comm(comm_));
      Abort();
      return absl::UnavailableError(st.message());
    }
    if (cancel != nullptr && cancel->load(std::memory_order_acquire)) {
      Abort();
      return absl::CancelledError("the NCCL link was closed");
    }
    if (absl::Now() > deadline) {
      Abort();
      return absl::DeadlineExceededError(
          StrCat("NCCL transfer not done after ", absl::FormatDuration(timeout)));
    }
    // A hidden-state row takes microseconds: spin a little before sleeping.
    if (polls < 256) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
}

void NcclLink::Abort() {
  if (comm_ == nullptr) return;
  auto n = LoadNccl();
  if (!n.ok()) return;
  cudaSetDevice(device_);
  (*n)->CommAbort(Comm(comm_));
  comm_ = nullptr;
}

absl::Status NcclLink::Send(
    const float* data, int64_t rows, int64_t n_embd, int peer, cudaStream_t stream) {
  if (rows < 0 || n_embd <= 0 || peer < 0 || peer >= nranks_) {
    return absl::InvalidArgumentError(StrCat("NCCL send of ", rows, "x", n_embd, " to ", peer));
  }
  if (comm_ == nullptr) return absl::UnavailableError("the NCCL link was aborted");
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  cudaSetDevice(device_);
  const ncclResult_t r =
      n->Send(data, static_cast<size_t>(rows * n_embd), ncclFloat32, peer, Comm(comm_), stream);
  if (r == ncclInProgress) return Wait("ncclSend");
  return NcclStatus(*n, r, "ncclSend", Comm(comm_));
}

absl::Status NcclLink::Recv(
    float* data, int64_t rows, int64_t n_embd, int peer, cudaStream_t stream) {
  if (rows < 0 || n_embd <= 0 || peer < 0 || peer >= nranks_) {
    return absl::InvalidArgumentError(StrCat("NCCL recv of ", rows, "x", n_embd, " from ", peer));
  }
  if (comm_ == nullptr) return absl::UnavailableError("the NCCL link was aborted");
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  cudaSetDevice(device_);
  const ncclResult_t r =
      n->Recv(data, static_cast<size_t>(rows * n_embd), ncclFloat32, peer, Comm(comm_), stream);
  if (r == ncclInProgress) return Wait("ncclRecv");
  return NcclStatus(*n, r, "ncclRecv", Comm(comm_));
}

absl::Status NcclLink::SendRecv(const float* send,
                                int send_peer,
                                float* recv,
                                int recv_peer,
                                int64_t rows,
                                int64_t n_embd,
                                cudaStream_t stream) {
  if (rows < 0 || n_embd <= 0 || send_peer < 0 || send_peer >= nranks_ || recv_peer < 0 ||
      recv_peer >= nranks_) {
    return absl::InvalidArgumentError("NCCL SendRecv: bad peer or size");
  }
  ASSIGN_OR_RETURN(const Nccl* n, LoadNccl());
  cudaSetDevice(device_);
  const size_t count = static_cast<size_t>(rows * n_embd);
  RETURN_IF_ERROR(NcclStatus(*n, n->GroupStart(), "ncclGroupStart"));
  ncclResult_t a = n->Send(send, count, ncclFloat32, send_peer, Comm(comm_), stream);
  ncclResult_t b = n->Recv(recv, count, ncclFloat32, recv_peer, Comm(comm_), stream);
  const ncclResult_t e = n->GroupEnd();
  for (ncclResult_t r : {a, b}) {
    if (r != ncclSuccess && r != ncclInProgress) {
      return NcclStatus(*n, r, "ncclSend/ncclRecv", Comm(comm_));
    }
  }
  if (e == ncclInProgress) return Wait("ncclSend/ncclRecv");
  return NcclStatus(*n, e, "ncclGroupEnd", Comm(comm_));
}

}  // namespace strata::kernels::cuda
