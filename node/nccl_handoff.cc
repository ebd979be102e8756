// The NCCL hand-off (builds with STRATA_CUDA): forward payloads between two node processes of
// one host, one GPU each, staged through a device buffer on each side (host rows -> device ->
// ncclSend ... ncclRecv -> device -> host rows).
#include <atomic>

#include "common/logging.h"
#include "common/strings.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/nccl_link.h"
#include "node/handoff.h"

namespace strata::node {
namespace {

namespace cu = kernels::cuda;

constexpr char kNccl[] = "nccl";

class NcclTransport final : public HandoffTransport {
 public:
  NcclTransport(std::unique_ptr<cu::NcclLink> link, int device)
      : link_(std::move(link)), device_(device), peer_(link_->rank() == 0 ? 1 : 0) {}

  ~NcclTransport() override {
    // Aborting never waits for the peer (destroying may).
    link_->Abort();
    if (stream_ != nullptr) {
      cudaSetDevice(device_);
      cudaStreamDestroy(stream_);
    }
  }

  absl::Status Send(std::span<const float> data, absl::Duration timeout) override {
    RETURN_IF_ERROR(Prepare(data.size()));
    const size_t bytes = data.size() * sizeof(float);
    RETURN_IF_ERROR(cu::CudaStatus(
        cudaMemcpyAsync(staging_.data(), data.data(), bytes, cudaMemcpyHostToDevice, stream_),
        "staging a payload"));
    RETURN_IF_ERROR(
        link_->Send(staging_.as<float>(), 1, static_cast<int64_t>(data.size()), peer_, stream_));
    return link_->Synchronize(stream_, timeout, &cancel_);
  }

  absl::Status Recv(std::span<float> data, absl::Duration timeout) override {
    RETURN_IF_ERROR(Prepare(data.size()));
    RETURN_IF_ERROR(
        link_->Recv(staging_.as<float>(), 1, static_cast<int64_t>(data.size()), peer_, stream_));
    RETURN_IF_ERROR(link_->Synchronize(stream_, timeout, &cancel_));
    RETURN_IF_ERROR(cu::CudaStatus(cudaMemcpyAsync(data.data(),
                                                   staging_.data(),
                                                   data.size() * sizeof(float),
                                                   cudaMemcpyDeviceToHost,
                                                   stream_),
                                   "unstaging a payload"));
    return cu::CudaStatus(cudaStreamSynchronize(stream_), "unstaging a payload");
  }

  // Only flags: the thread using the link aborts the communicator itself.
  void Abort() override { cancel_.store(true, std::memory_order_release); }

 private:
  absl::Status Prepare(size_t floats) {
    if (cancel_.load(std::memory_order_acquire)) {
      link_->Abort();
      return absl::CancelledError("the NCCL link was closed");
    }
    if (floats == 0) return absl::InvalidArgumentError("an empty payload");
    RETURN_IF_ERROR(cu::UseDevice(device_));
    if (stream_ == nullptr) {
      RETURN_IF_ERROR(cu::CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                     "creating the link's stream"));
    }
    return staging_.Reserve(device_, floats * sizeof(float));
  }

  std::unique_ptr<cu::NcclLink> link_;
  const int device_;
  const int peer_;
  std::atomic<bool> cancel_{false};
  cudaStream_t stream_ = nullptr;
  cu::DeviceBuffer staging_;
};

class NcclHandoff final : public HandoffProvider {
 public:
  NcclHandoff(int device, std::string node_id)
      : device_(device), node_id_(std::move(node_id)), host_(HostIdentity()) {}

  absl::StatusOr<v1::HandoffOffer> Offer() override {
    ASSIGN_OR_RETURN(cu::NcclId id, cu::NcclId::Create());
    v1::HandoffOffer offer;
    offer.set_transport(kNccl);
    offer.set_host_id(host_);
    offer.set_rendezvous(id.Serialize());
    offer.set_node_id(node_id_);
    offer.set_device(StrCat("cuda:", device_));
    return offer;
  }

  absl::Status CanAccept(const v1::HandoffOffer& offer) override {
    if (offer.transport() != kNccl) {
      return absl::UnimplementedError(StrCat("unknown transport '", offer.transport(), "'"));
    }
    if (offer.host_id() != host_) {
      return absl::FailedPreconditionError("the previous hop runs on another host");
    }
    RETURN_IF_ERROR(cu::NcclId::Parse(offer.rendezvous()).status());
    return cu::NcclVersion().status();
  }

  absl::StatusOr<std::unique_ptr<HandoffTransport>> Connect(const v1::HandoffOffer& offer,
                                                            bool offering,
                                                            absl::Duration timeout) override {
    ASSIGN_OR_RETURN(cu::NcclId id, cu::NcclId::Parse(offer.rendezvous()));
    ASSIGN_OR_RETURN(std::unique_ptr<cu::NcclLink> link,
                     cu::NcclLink::Connect(device_, id, offering ? 0 : 1, 2, timeout));
    return std::unique_ptr<HandoffTransport>(new NcclTransport(std::move(link), device_));
  }

 private:
  const int device_;
  const std::string node_id_;
  const std::string host_;
};

}  // namespace

std::shared_ptr<HandoffProvider> MakeNcclHandoff(int device, std::string node_id) {
  return std::make_shared<NcclHandoff>(device, std::move(node_id));
}

}  // namespace strata::node
