#include "client/swarm_client.h"

#include "absl/time/clock.h"
#include "client/generate.h"
#include "client/prompt.h"
#include "client/run_request.h"
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
  ASSIGN_OR_RETURN(c->tokenizer_, text::Tokenizer::FromGguf(c->model_->gguf()));
  ASSIGN_OR_RETURN(c->embedder_, model::Embedder::Load(c->model_));
  ASSIGN_OR_RETURN(c->head_, model::Head::Load(c->model_));
  c->pool_ = std::make_unique<ThreadPool>(options.threads > 0 ? options.threads
                                                              : ThreadPool::DefaultThreads());
  c->drafters_ = std::make_unique<DrafterCache>(
      options.model_path, c->model_->hparams().n_vocab, options.threads);
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

absl::StatusOr<std::unique_ptr<RemoteChain>> SwarmClient::OpenChain(
    std::vector<std::string> avoid) {
  RemoteChainOptions o;
  o.model_id = model_->id();
  o.hidden_size = model_->hparams().n_embd;
  o.step_timeout = absl::Milliseconds(options_.step_timeout_ms);
  o.open_timeout = absl::Milliseconds(options_.open_timeout_ms);
  o.routes = [this, avoid](int start, const std::vector<std::string>& exclude) {
    std::vector<std::string> all = avoid;
    all.insert(all.end(), exclude.begin(), exclude.end());
    auto route = GetRoute(start, all);
    // Avoiding is a preference: fall back to any route rather than none.
    if (!route.ok() && !avoid.empty()) route = GetRoute(start, exclude);
    return route;
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
  return std::make_unique<InferenceSession>(
      embedder_.get(), head_.get(), std::move(chain), pool_.get());
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
  return GenerateWith(request, nullptr, on_token);
}

absl::Status SwarmClient::LoadDrafter(const strata::Drafter& drafter) {
  if (!drafter.enabled()) return absl::OkStatus();
  return drafters_->Take(DrafterName(drafter)).status();  // the lease goes back at once
}

absl::StatusOr<strata::GenerateResult> SwarmClient::GenerateWith(
    const GenerateRequest& request,
    Drafter* drafter,
    const strata::TokenCallback& on_token,
    DrafterCache::Learned* learned) {
  return Run(request, nullptr, drafter, on_token, learned);
}

absl::StatusOr<strata::GenerateResult> SwarmClient::GenerateTokens(
    std::span<const int32_t> prompt,
    const GenerateRequest& request,
    const strata::TokenCallback& on_token) {
  return Run(request, &prompt, nullptr, on_token);
}

absl::StatusOr<strata::GenerateResult> SwarmClient::Run(const GenerateRequest& request,
                                                        const std::span<const int32_t>* prompt,
                                                        Drafter* drafter,
                                                        const strata::TokenCallback& on_token,
                                                        DrafterCache::Learned* learned) {
  // Replicas (dsi) go over different routes when the swarm has them.
  std::vector<std::unique_ptr<RemoteChain>> owned;
  std::vector<Chain*> chains;
  std::vector<std::string> avoid;
  for (int i = 0; i < ChainsFor(request); ++i) {
    auto chain = OpenChain(avoid);
    if (!chain.ok() && i > 0) chain = OpenChain({});  // no disjoint route: share nodes
    if (!chain.ok()) return chain.status();
    for (const HopInfo& h : (*chain)->Hops()) avoid.push_back(h.node_id);
    chains.push_back(chain->get());
    owned.push_back(std::move(*chain));
  }
  RequestContext context{embedder_.get(),
                         head_.get(),
                         tokenizer_.get(),
                         pool_.get(),
                         options_.model_path,
                         options_.threads,
                         drafter,
                         drafters_.get(),
                         learned};
  ASSIGN_OR_RETURN(strata::GenerateResult out,
                   prompt != nullptr ? RunTokens(*prompt, request, context, chains, on_token)
                                     : RunRequest(request, context, chains, on_token));
  out.route = ToRouteHops(owned[0]->Hops());  // the route in use at the end
  for (auto& chain : owned) closer_->Close(std::move(chain));
  return out;
}

}  // namespace client
}  // namespace strata
