// The NCCL hand-off between two CUDA nodes on a two-hop route of the default model: NodeServers
// in this process, then two `strata node` processes. With two GPUs the hops link over NCCL and
// every payload after the first token goes over it; with one GPU NCCL refuses two ranks on the same
// device, so the link falls back to gRPC and says why. Either way the tokens equal a gRPC-only CUDA
// route exactly, and a CPU route's (the same backend kind is not required there: CUDA and CPU agree
// within a tolerance only, so that comparison reports rather than fails beyond the first tokens).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <thread>

#include "kernels/cuda/nccl_link.h"
#include "strata/client.h"
#include "strata/v1/node.grpc.pb.h"
#include "tests/cuda/gpu_testing.h"
#include "tests/node/handoff_testing.h"
#include "tests/testing/swarm.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;

constexpr int kSteps = 12;

struct TwoHops {
  std::unique_ptr<node::NodeServer> a, b;
  std::vector<node::NodeServer*> nodes() const { return {a.get(), b.get()}; }
};

TwoHops Start(const std::string& device_a, const std::string& device_b, bool nccl) {
  TwoHops h;
  node::NodeOptions o;
  o.nccl = nccl;
  o.device = device_a;
  o.node_id = "hop-a-" + device_a;
  h.a = testkit::StartSpanNode(o, 0, 15);
  o.device = device_b;
  o.node_id = "hop-b-" + device_b;
  h.b = testkit::StartSpanNode(o, 15, 30);
  return h;
}

TEST(NcclHandoff, CudaNodesLinkOrFallBackWithTheSameTokens) {
  STRATA_SKIP_WITHOUT_GPU();
  ASSERT_TRUE(testkit::DefaultModelPresent());
  ASSERT_NE(testkit::SharedClientModel(), nullptr);
  const int gpus = *cu::DeviceCount();
  const std::string dev_b = gpus >= 2 ? "cuda:1" : "cuda:0";
  const absl::StatusOr<std::string> nccl = cu::NcclVersion();
  std::cout << gpus << " GPU(s); NCCL " << (nccl.ok() ? *nccl : nccl.status().ToString()) << "\n";
  const std::vector<int32_t> prompt = testkit::TestPrompt();

  std::vector<int32_t> grpc_tokens;
  {
    TwoHops plain = Start("cuda:0", dev_b, /*nccl=*/false);
    ASSERT_TRUE(plain.a && plain.b);
    auto t = testkit::GreedyOverRoute(plain.nodes(), prompt, kSteps);
    ASSERT_TRUE(t.ok()) << t.status();
    grpc_tokens = *t;
  }

  TwoHops linked = Start("cuda:0", dev_b, /*nccl=*/true);
  ASSERT_TRUE(linked.a && linked.b);
  v1::DownstreamLinkInfo after_first, at_end;
  int failovers = -1;
  auto t = testkit::GreedyOverRoute(
      linked.nodes(),
      prompt,
      kSteps,
      [&] { after_first = testkit::SettledLink(*linked.a); },
      [&] { at_end = testkit::SettledLink(*linked.a); },
      &failovers);
  ASSERT_TRUE(t.ok()) << t.status();
  std::cout << "link cuda:0 -> " << dev_b << ": " << at_end.transport() << " ("
            << (at_end.reason().empty() ? "no fallback" : at_end.reason()) << "), "
            << at_end.link_payloads() << " payloads over the link\n";
  EXPECT_EQ(*t, grpc_tokens);
  EXPECT_EQ(failovers, 0);
  if (gpus >= 2 && nccl.ok()) {
    EXPECT_EQ(after_first.transport(), "nccl") << after_first.reason();
    EXPECT_EQ(at_end.transport(), "nccl") << at_end.reason();
    // The rest of the prompt and every decode step.
    EXPECT_EQ(at_end.link_payloads(), kSteps + 1);
  } else {
    EXPECT_EQ(at_end.transport(), "grpc");
    EXPECT_FALSE(at_end.reason().empty());
    EXPECT_EQ(at_end.link_payloads(), 0);
  }

  // The session above is closed: its link leaves the Info RPC's list.
  auto stub = v1::Node::NewStub(
      grpc::CreateChannel(linked.a->address(), grpc::InsecureChannelCredentials()));
  v1::NodeInfo info;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    info.Clear();
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ASSERT_TRUE(stub->Info(&ctx, v1::InfoRequest(), &info).ok());
    if (info.links_size() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (absl::Now() < deadline);
  EXPECT_EQ(info.links_size(), 0);

  TwoHops cpu;
  {
    node::NodeOptions o;
    o.threads = 2;
    cpu.a = testkit::StartSpanNode(o, 0, 15);
    cpu.b = testkit::StartSpanNode(o, 15, 30);
  }
  ASSERT_TRUE(cpu.a && cpu.b);
  auto c = testkit::GreedyOverRoute(cpu.nodes(), prompt, kSteps);
  ASSERT_TRUE(c.ok()) << c.status();
  int same = 0;
  while (same < kSteps && (*c)[same] == (*t)[same]) ++same;
  std::cout << "CUDA and CPU routes agree on the first " << same << " of " << kSteps << " tokens\n";
  EXPECT_GE(same, 4);
}

// The first hop's link as its Info RPC reports it, once negotiation settled.
v1::DownstreamLinkInfo InfoLink(const std::string& address) {
  auto stub = v1::Node::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  v1::DownstreamLinkInfo link;
  while (absl::Now() < deadline) {
    v1::NodeInfo info;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (stub->Info(&ctx, v1::InfoRequest(), &info).ok() && info.links_size() == 1) {
      link = info.links(0);
      if (link.transport() != "grpc" ||
          (link.reason() != "negotiating" && link.reason().find(" offered") == std::string::npos)) {
        return link;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return link;
}

// Greedy tokens over a swarm of two `strata node` processes (layers 0-14 on cuda:0, 15-29 on
// `dev_b`); `link` gets the first hop's link after the last step.
std::vector<int32_t> ProcessRoute(const std::string& dev_b,
                                  bool nccl,
                                  v1::DownstreamLinkInfo* link) {
  auto swarm = testkit::StartSwarm();
  if (!swarm) return {};
  for (const auto& [layers, device] :
       {std::pair<std::string, std::string>{"0:15", "cuda:0"}, {"15:30", dev_b}}) {
    testkit::NodeSpec spec;
    spec.layers = layers;
    spec.extra_args = {"--device", device};
    if (!nccl) spec.extra_args.push_back("--no-nccl");
    auto node = swarm->AddNode(spec);
    EXPECT_TRUE(node.ok()) << node.status();
    if (!node.ok()) return {};
  }
  EXPECT_TRUE(swarm->WaitUntilServing(2).ok());
  ClientOptions co;
  co.coordinators = {swarm->coordinator()};
  co.model_path = testkit::DefaultModelPath();
  co.threads = 1;
  auto client = Client::Connect(co);
  EXPECT_TRUE(client.ok()) << client.status();
  if (!client.ok()) return {};
  auto session = (*client)->OpenSession();
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return {};
  const std::vector<int32_t> prompt = testkit::TestPrompt();
  auto logits = (*session)->Feed(std::span<const int32_t>(prompt.data(), 1));
  EXPECT_TRUE(logits.ok()) << logits.status();
  std::string first_hop;
  for (const RouteHop& h : (*session)->route()) {
    if (h.first_layer == 0) first_hop = h.address;
  }
  InfoLink(first_hop);  // let the link settle before the rest of the prompt
  logits = (*session)->Feed(std::span<const int32_t>(prompt.data() + 1, prompt.size() - 1));
  std::vector<int32_t> out;
  for (int i = 0; logits.ok() && i < kSteps; ++i) {
    out.push_back(model::Argmax(*logits));
    const int32_t next[1] = {out.back()};
    logits = (*session)->Feed(next);
  }
  EXPECT_TRUE(logits.ok()) << logits.status();
  *link = InfoLink(first_hop);
  return out;
}

TEST(NcclHandoff, NodeProcessesLinkOrFallBackWithTheSameTokens) {
  STRATA_SKIP_WITHOUT_GPU();
  ASSERT_TRUE(testkit::DefaultModelPresent());
  ASSERT_NE(testkit::SharedClientModel(), nullptr);
  const int gpus = *cu::DeviceCount();
  const std::string dev_b = gpus >= 2 ? "cuda:1" : "cuda:0";
  const bool nccl = cu::NcclVersion().ok();
  v1::DownstreamLinkInfo plain_link, link;
  const std::vector<int32_t> plain = ProcessRoute(dev_b, /*nccl=*/false, &plain_link);
  ASSERT_EQ(plain.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(plain_link.transport(), "grpc");
  EXPECT_THAT(plain_link.reason(), ::testing::HasSubstr("--no-nccl"));
  const std::vector<int32_t> linked = ProcessRoute(dev_b, /*nccl=*/true, &link);
  std::cout << "processes cuda:0 -> " << dev_b << ": " << link.transport() << " ("
            << (link.reason().empty() ? "no fallback" : link.reason()) << "), "
            << link.link_payloads() << " payloads over the link\n";
  EXPECT_EQ(linked, plain);
  if (gpus >= 2 && nccl) {
    EXPECT_EQ(link.transport(), "nccl") << link.reason();
    EXPECT_EQ(link.link_payloads(), kSteps + 1);  // the rest of the prompt and every step
  } else {
    EXPECT_EQ(link.transport(), "grpc");
    EXPECT_FALSE(link.reason().empty());
  }
}

}  // namespace
}  // namespace strata
