#include "client/swarm_client.h"

#include "absl/time/clock.h"
#include "client/generate.h"
#include "client/prompt.h"
#include "common/grpc_util.h"
#include "common/status.h"
#include "common/strings.h"
#include "transport/channels.h"

namespace strata {

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  auto client = client::SwarmClient::Create(options);
  if (!client.ok()) return client.status();
  return std::unique_ptr<Client>(std::move(*client));
}

namespace client {
namespace {

std::vector<RouteHop> ToRouteHops(const std::vector<HopInfo>& hops) {
  std::vector<RouteHop> out;
  for (const HopInfo& h : hops) out.push_back({h.node_id, h.address, h.first_layer, h.last_layer});
  return out;
}

// A Session that owns its chain.
class SwarmSession final : public strata::Session {
 public:
  SwarmSession(std::unique_ptr<InferenceSession> session, RemoteChain* chain)
      : session_(std::move(session)), chain_(chain) {}
  absl::StatusOr<std::span<const float>> Feed(std::span<const int32_t> tokens) override {
    return session_->Feed(tokens);
  }
  std::span<const float> hidden() const override { return session_->hidden(); }
  int position() const override { return session_->position(); }
  std::vector<RouteHop> route() const override { return ToRouteHops(chain_->Hops()); }

 private:
  std::unique_ptr<InferenceSession> session_;
  RemoteChain* chain_;  // owned by session_
};

}  // namespace

absl::StatusOr<std::unique_ptr<SwarmClient>> SwarmClient::Create(const ClientOptions& options) {
  if (options.coordinators.empty()) {
    return absl::InvalidArgumentError("no coordinator address given");
  }
  auto c = std::unique_ptr<SwarmClient>(new SwarmClient());
  c->options_ = options;
  ASSIGN_OR_RETURN(c->model_, model::Model::Open(options.model_path));
  ASSIGN_OR_RETURN(c->tokenizer_, model::Tokenizer::FromGguf(c->model_->gguf()));
  ASSIGN_OR_RETURN(c->embedder_, model::Embedder::Load(c->model_));
  ASSIGN_OR_RETURN(c->head_, model::Head::Load(c->model_));
  c->pool_ = std::make_unique<ThreadPool>(options.threads > 0 ? options.threads
                                                              : ThreadPool::DefaultThreads());
  for (const std::string& address : options.coordinators) {
    c->coordinators_.push_back(
        v1::Coordinator::NewStub(transport::ChannelCache::Default().Get(address)));
  }
  return c;
}

absl::StatusOr<v1::RouteResponse> SwarmClient::GetRoute(int start_layer,
                                                        const std::vector<std::string>& exclude) {
  absl::Status last = absl::UnavailableError("no coordinator answered");
  for (size_t i = 0; i < coordinators_.size(); ++i) {
    v1::RouteRequest req;
    req.set_model_id(model_->id());
    for (const std::string& id : exclude) req.add_exclude_node_ids(id);
    req.set_start_layer(start_layer);
    req.set_alternates(3);
    v1::RouteResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    grpc::Status st = coordinators_[i]->GetRoute(&ctx, req, &resp);
    if (st.ok()) return resp;
    last = absl::Status(FromGrpcStatus(st).code(),
                        StrCat("coordinator ", options_.coordinators[i], ": ", st.error_message()));
  }
  return last;
}

void SwarmClient::ReportFailure(const std::string& node_id, const absl::Status& why) {
  for (auto& c : coordinators_) {
    v1::FailureReport req;
    req.set_node_id(node_id);
    req.set_reason(std::string(why.message()));
    req.set_code(static_cast<int>(why.code()));
    v1::FailureAck ack;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    (void)c->ReportFailure(&ctx, req, &ack);
  }
}

absl::StatusOr<std::unique_ptr<RemoteChain>> SwarmClient::OpenChain() {
  RemoteChainOptions o;
  o.model_id = model_->id();
  o.hidden_size = model_->hparams().n_embd;
  o.step_timeout = absl::Milliseconds(options_.step_timeout_ms);
  o.open_timeout = absl::Milliseconds(options_.open_timeout_ms);
  o.routes = [this](int start, const std::vector<std::string>& exclude) {
    return GetRoute(start, exclude);
  };
  o.report_failure = [this](const std::string& node, const absl::Status& why) {
    ReportFailure(node, why);
  };
  return RemoteChain::Open(o);
}

absl::StatusOr<std::unique_ptr<InferenceSession>> SwarmClient::NewInferenceSession(
    std::vector<HopInfo>* route_out, RemoteChain** chain_out) {
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteChain> chain, OpenChain());
  if (route_out) *route_out = chain->Hops();
  if (chain_out) *chain_out = chain.get();
  return std::make_unique<InferenceSession>(embedder_.get(), head_.get(), std::move(chain),
                                            pool_.get());
}

absl::StatusOr<std::unique_ptr<strata::Session>> SwarmClient::OpenSession() {
  RemoteChain* chain = nullptr;
  ASSIGN_OR_RETURN(auto session, NewInferenceSession(nullptr, &chain));
  return std::unique_ptr<strata::Session>(new SwarmSession(std::move(session), chain));
}

absl::StatusOr<std::vector<int32_t>> SwarmClient::Tokenize(const GenerateRequest& request) const {
  return PromptTokens(*tokenizer_, request);
}

std::string SwarmClient::Detokenize(const std::vector<int32_t>& ids) const {
  return tokenizer_->Decode(ids);
}

absl::StatusOr<strata::GenerateResult> SwarmClient::Generate(
    const GenerateRequest& request, const strata::TokenCallback& on_token) {
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(*tokenizer_, request));
  RemoteChain* chain = nullptr;
  ASSIGN_OR_RETURN(auto session, NewInferenceSession(nullptr, &chain));
  ASSIGN_OR_RETURN(Generation r,
                   client::Generate(*session, *tokenizer_, prompt, ToGenerateOptions(request),
                                    on_token));
  strata::GenerateResult out;
  out.text = std::move(r.text);
  out.token_ids = std::move(r.tokens);
  out.prompt_tokens = r.prompt_tokens;
  out.ttft_ms = r.ttft_ms;
  out.decode_tokens_per_s = r.decode_tokens_per_s;
  out.finish_reason = r.finish_reason;
  out.route = ToRouteHops(chain->Hops());  // the route in use at the end
  return out;
}

}  // namespace client
}  // namespace strata
