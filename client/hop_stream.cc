#include "client/hop_stream.h"

#include "transport/channels.h"

namespace strata::client {

HopStream::HopStream(const std::string& address, const v1::OpenSession& open, Handler handler)
    : handler_(std::move(handler)) {
  stub_ = v1::Node::NewStub(transport::ChannelCache::Default().Get(address));
  // A session lives as long as its streams; per-step deadlines are enforced by the chain.
  context_.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(24));
  stream_ = stub_->Session(&context_);
  v1::SessionRequest req;
  *req.mutable_open() = open;
  stream_->Write(req);
  reader_ = std::thread([this] { ReadLoop(); });
}

HopStream::~HopStream() { Close(absl::Seconds(1)); }

bool HopStream::Write(const v1::SessionRequest& request) {
  absl::MutexLock lock(&write_mu_);
  {
    absl::MutexLock state(&mu_);
    if (closed_ || ended_) return false;
  }
  return stream_->Write(request);
}

void HopStream::ReadLoop() {
  v1::SessionResponse resp;
  while (stream_->Read(&resp)) handler_(&resp, grpc::Status::OK);
  grpc::Status status = stream_->Finish();
  {
    absl::MutexLock lock(&mu_);
    ended_ = true;  // Close's Await sees it when mu_ is released
  }
  handler_(nullptr, status);
}

void HopStream::EndWrites() {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    closed_ = true;
  }
  absl::MutexLock lock(&write_mu_);
  stream_->WritesDone();
}

void HopStream::Close(absl::Duration grace) {
  EndWrites();
  {
    absl::MutexLock lock(&mu_);
    if (joined_) return;
    joined_ = true;
    if (!mu_.AwaitWithTimeout(absl::Condition(&ended_), grace)) context_.TryCancel();
  }
  if (reader_.joinable()) reader_.join();
}

}  // namespace strata::client
