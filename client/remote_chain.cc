#include "client/remote_chain.h"

#include <cstring>
#include <random>

#include "common/grpc_util.h"
#include "common/strings.h"
#include "transport/channels.h"
#include "transport/tensor_codec.h"

namespace strata::client {

std::string RandomHex128() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 2; ++i) {
    uint64_t x = rng();
    for (int j = 0; j < 16; ++j, x >>= 4) s += hex[x & 15];
  }
  return s;
}

absl::StatusOr<std::unique_ptr<RemoteChain>> RemoteChain::Open(const v1::Route& route,
                                                               const RemoteChainOptions& options) {
  if (route.hops_size() == 0) return absl::InvalidArgumentError("the route has no hops");
  auto chain = std::unique_ptr<RemoteChain>(new RemoteChain());
  chain->options_ = options;
  chain->route_ = route;
  chain->session_id_ = RandomHex128();
  const std::string token = RandomHex128();
  const absl::Time deadline = absl::Now() + options.open_timeout;
  for (int i = 0; i < route.hops_size(); ++i) {
    auto hop = std::make_unique<Hop>();
    hop->hop = route.hops(i);
    hop->stub = v1::Node::NewStub(transport::ChannelCache::Default().Get(hop->hop.address()));
    // A session lives as long as its streams; the per-step timeout bounds each wait.
    hop->context.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(24));
    hop->stream = hop->stub->Session(&hop->context);
    v1::SessionRequest req;
    v1::OpenSession* o = req.mutable_open();
    o->set_protocol_version(v1::PROTOCOL_VERSION_1);
    o->set_session_id(chain->session_id_);
    o->set_token(token);
    o->set_model_id(options.model_id);
    o->set_first_layer(hop->hop.first_layer());
    o->set_last_layer(hop->hop.last_layer());
    if (i + 1 < route.hops_size()) o->set_next_address(route.hops(i + 1).address());
    o->set_max_length(options.max_length);
    o->set_hop_index(i);
    o->set_wire_dtype(options.wire_dtype);
    o->set_want_boundary_copies(options.boundary_copies && i + 1 < route.hops_size());
    hop->stream->Write(req);
    chain->hops_.push_back(std::move(hop));
  }
  for (int i = 0; i < static_cast<int>(chain->hops_.size()); ++i) {
    chain->hops_[i]->reader = std::thread([c = chain.get(), i] { c->ReadLoop(i); });
  }
  // Wait for every hop to accept (or refuse) the session.
  std::unique_lock<std::mutex> lock(chain->mu_);
  for (int i = 0; i < static_cast<int>(chain->hops_.size()); ++i) {
    Hop& h = *chain->hops_[i];
    const bool ready = chain->cv_.wait_until(lock, absl::ToChronoTime(deadline),
                                             [&] { return h.opened || h.ended; });
    if (h.opened) continue;
    const absl::Status st =
        !ready ? absl::DeadlineExceededError(StrCat("hop ", h.hop.node_id(), " (",
                                                    h.hop.address(), ") did not answer the open"))
               : absl::Status(h.end_status.code(),
                              StrCat("hop ", h.hop.node_id(), " (", h.hop.address(),
                                     ") refused the session: ", h.end_status.message()));
    chain->failure_ = {i, st};
    lock.unlock();
    return st;
  }
  return chain;
}

RemoteChain::~RemoteChain() { Close(); }

void RemoteChain::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  for (auto& h : hops_) h->stream->WritesDone();
  // Readers end when the node finishes the stream; a hop that does not answer is cancelled.
  for (auto& h : hops_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::seconds(2), [&] { return h->ended; })) {
        h->context.TryCancel();
      }
    }
    if (h->reader.joinable()) h->reader.join();
  }
}

void RemoteChain::ReadLoop(int index) {
  Hop& h = *hops_[index];
  v1::SessionResponse resp;
  while (h.stream->Read(&resp)) {
    std::lock_guard<std::mutex> lock(mu_);
    switch (resp.kind_case()) {
      case v1::SessionResponse::kOpened:
        h.opened = true;
        break;
      case v1::SessionResponse::kResult: {
        Reply& r = replies_[resp.result().op_seq()];
        r.done = true;
        r.hop = index;
        r.result = std::move(*resp.mutable_result());
        break;
      }
      case v1::SessionResponse::kDone: {
        Reply& r = replies_[resp.done().op_seq()];
        r.done = true;
        r.hop = index;
        break;
      }
      case v1::SessionResponse::kError: {
        Reply& r = replies_[resp.error().op_seq()];
        r.done = true;
        r.hop = index;
        r.status = StatusFromCode(resp.error().code(),
                                  StrCat(h.hop.node_id(), ": ", resp.error().message()));
        break;
      }
      case v1::SessionResponse::kBoundary: {
        const int layer = resp.boundary().boundary_layer();
        const uint64_t seq = resp.boundary().op_seq();
        boundaries_[layer][seq] = std::move(*resp.mutable_boundary());
        break;
      }
      default:
        break;
    }
    cv_.notify_all();
  }
  grpc::Status st = h.stream->Finish();
  std::lock_guard<std::mutex> lock(mu_);
  h.ended = true;
  h.end_status = st.ok() && !closed_
                     ? absl::UnavailableError(StrCat(h.hop.node_id(), " closed the session"))
                     : FromGrpcStatus(st);
  cv_.notify_all();
}

absl::StatusOr<v1::ForwardResult> RemoteChain::Run(v1::Op op) {
  const uint64_t seq = next_op_++;
  op.set_op_seq(seq);
  v1::SessionRequest req;
  *req.mutable_op() = std::move(op);
  if (!hops_[0]->stream->Write(req)) {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = {0, absl::UnavailableError(StrCat(hops_[0]->hop.node_id(), " is unreachable"))};
    return failure_.status;
  }
  std::unique_lock<std::mutex> lock(mu_);
  int ended = -1;
  auto ready = [&] {
    auto it = replies_.find(seq);
    if (it != replies_.end() && it->second.done) return true;
    for (int i = 0; i < static_cast<int>(hops_.size()); ++i) {
      if (hops_[i]->ended) {
        ended = i;
        return true;
      }
    }
    return false;
  };
  if (!cv_.wait_for(lock, absl::ToChronoMilliseconds(options_.step_timeout), ready)) {
    failure_ = {-1, absl::DeadlineExceededError(
                        StrCat("no answer from the route within ",
                               absl::FormatDuration(options_.step_timeout)))};
    return failure_.status;
  }
  auto it = replies_.find(seq);
  if (it != replies_.end() && it->second.done) {
    Reply r = std::move(it->second);
    replies_.erase(it);
    if (!r.status.ok()) {
      failure_ = {r.hop, r.status};
      return r.status;
    }
    return std::move(r.result);
  }
  const Hop& h = *hops_[ended];
  failure_ = {ended, absl::Status(h.end_status.code(),
                                  StrCat("hop ", h.hop.node_id(), " (", h.hop.address(),
                                         ") failed: ", h.end_status.message()))};
  return failure_.status;
}

absl::Status RemoteChain::Forward(std::span<const model::Row> rows, const float* hidden,
                                  std::span<const int32_t> out_rows, float* out) {
  v1::Op op;
  v1::Forward* f = op.mutable_forward();
  for (const model::Row& r : rows) {
    v1::RowMeta* m = f->add_rows();
    m->set_pos(r.pos);
    m->set_seqs(r.seqs);
  }
  for (int32_t o : out_rows) f->add_out_rows(o);
  transport::EncodeRows(hidden, static_cast<int64_t>(rows.size()), options_.hidden_size,
                        options_.wire_dtype, f->mutable_hidden());
  auto result = Run(std::move(op));
  if (!result.ok()) return result.status();
  std::vector<float> values;
  values.reserve(out_rows.size() * options_.hidden_size);
  absl::Status st = transport::DecodeRows(result->hidden(), static_cast<int64_t>(out_rows.size()),
                                          options_.hidden_size, &values);
  if (!st.ok()) return absl::InternalError(StrCat("bad result from the last hop: ", st.message()));
  std::memcpy(out, values.data(), values.size() * sizeof(float));
  return absl::OkStatus();
}

absl::Status RemoteChain::Truncate(model::SeqId seq, int32_t from_pos) {
  v1::Op op;
  op.mutable_truncate()->set_seq(seq);
  op.mutable_truncate()->set_from_pos(from_pos);
  return Run(std::move(op)).status();
}

std::vector<HopInfo> RemoteChain::Hops() const {
  std::vector<HopInfo> out;
  for (const auto& h : hops_) {
    out.push_back({h->hop.node_id(), h->hop.address(), h->hop.first_layer(), h->hop.last_layer()});
  }
  return out;
}

HopFailure RemoteChain::last_failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

}  // namespace strata::client
