// Bad input to every Node RPC gets a clear gRPC status, and the node keeps serving its other
// sessions with correct results.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <random>

#include "client/generate.h"
#include "client/local_model.h"
#include "client/prompt.h"
#include "model/llama.h"
#include "strata/client.h"
#include "strata/v1/coordinator.grpc.pb.h"
#include "strata/v1/node.grpc.pb.h"
#include "tests/testing/paths.h"
#include "tests/testing/swarm.h"
#include "transport/tensor_codec.h"

namespace strata {
namespace {

using Stream = grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>;

class NodeInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testkit::DefaultModelPresent());
    swarm_ = testkit::StartSwarm().release();
    ASSERT_NE(swarm_, nullptr);
    for (const char* layers : {"0:15", "15:30"}) {
      testkit::NodeSpec spec;
      spec.layers = layers;
      ASSERT_TRUE(swarm_->AddNode(spec).ok());
    }
    ASSERT_TRUE(swarm_->WaitUntilServing(2).ok());
    auto model = model::Model::Open(testkit::DefaultModelPath());
    ASSERT_TRUE(model.ok());
    model_id_ = new std::string((*model)->id());
    width_ = (*model)->hparams().n_embd;
  }
  static void TearDownTestSuite() { delete swarm_; }

  std::unique_ptr<v1::Node::Stub> Stub(int node) {
    return v1::Node::NewStub(
        grpc::CreateChannel(swarm_->nodes()[node]->address, grpc::InsecureChannelCredentials()));
  }

  v1::OpenSession Open(int node, const std::string& id) {
    v1::OpenSession o;
    o.set_protocol_version(v1::PROTOCOL_VERSION_1);
    o.set_session_id(id);
    o.set_token("secret");
    o.set_model_id(*model_id_);
    o.set_first_layer(swarm_->nodes()[node]->first_layer);
    o.set_last_layer(swarm_->nodes()[node]->last_layer);
    o.set_hop_index(node);
    return o;
  }

  // Opens a session on `node` and returns the stream once it is accepted.
  std::unique_ptr<Stream> OpenOk(v1::Node::Stub* stub,
                                 grpc::ClientContext* ctx,
                                 const v1::OpenSession& open) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = stub->Session(ctx);
    v1::SessionRequest req;
    *req.mutable_open() = open;
    EXPECT_TRUE(stream->Write(req));
    v1::SessionResponse resp;
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_TRUE(resp.has_opened());
    return stream;
  }

  // Sends only an open and returns the status the node ends the stream with.
  grpc::Status OpenStatus(const v1::OpenSession& open, int node = 0) {
    auto stub = Stub(node);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = stub->Session(&ctx);
    v1::SessionRequest req;
    *req.mutable_open() = open;
    stream->Write(req);
    stream->WritesDone();
    v1::SessionResponse resp;
    while (stream->Read(&resp)) {
    }
    return stream->Finish();
  }

  v1::Op ForwardOp(uint64_t seq, int rows, int width, int first_pos = 0) {
    v1::Op op;
    op.set_op_seq(seq);
    std::vector<float> hidden(static_cast<size_t>(rows) * width, 0.01f);
    for (int i = 0; i < rows; ++i) {
      v1::RowMeta* m = op.mutable_forward()->add_rows();
      m->set_pos(first_pos + i);
      m->set_seqs(1);
    }
    transport::EncodeRows(
        hidden.data(), rows, width, v1::DTYPE_F32, op.mutable_forward()->mutable_hidden());
    return op;
  }

  // Sends `op` on an open stream and returns the OpError code (OK if it succeeded).
  int SendOp(Stream* stream, v1::Op op) {
    v1::SessionRequest req;
    *req.mutable_op() = std::move(op);
    EXPECT_TRUE(stream->Write(req));
    v1::SessionResponse resp;
    while (stream->Read(&resp)) {
      if (resp.has_error()) return resp.error().code();
      if (resp.has_result() || resp.has_done()) return 0;
    }
    return -1;
  }

  // Starts a push stream as the previous hop of `session` would, its first message carrying
  // `op`.
  std::unique_ptr<grpc::ClientReaderWriter<v1::PushRequest, v1::PushResponse>> StartPush(
      v1::Node::Stub* stub, grpc::ClientContext* ctx, const std::string& session, v1::Op op) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto push = stub->Push(ctx);
    v1::PushRequest first;
    first.set_session_id(session);
    first.set_token("secret");
    *first.mutable_op() = std::move(op);
    EXPECT_TRUE(push->Write(first));
    return push;
  }

  static testkit::LocalSwarm* swarm_;
  static std::string* model_id_;
  static int width_;
};

testkit::LocalSwarm* NodeInputTest::swarm_ = nullptr;
std::string* NodeInputTest::model_id_ = nullptr;
int NodeInputTest::width_ = 0;

TEST_F(NodeInputTest, BadOpensAreRefusedWithTheRightCode) {
  v1::OpenSession o = Open(0, "bad-version");
  o.set_protocol_version(static_cast<v1::ProtocolVersion>(7));
  grpc::Status st = OpenStatus(o);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("protocol version 7"), std::string::npos) << st.error_message();

  o = Open(0, "bad-model");
  o.set_model_id("some-other-model");
  EXPECT_EQ(OpenStatus(o).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  o = Open(0, "bad-layers");
  o.set_last_layer(25);  // node 0 serves [0, 15)
  EXPECT_EQ(OpenStatus(o).error_code(), grpc::StatusCode::OUT_OF_RANGE);

  o = Open(0, "");
  EXPECT_EQ(OpenStatus(o).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // An op before the open.
  auto stub = Stub(0);
  grpc::ClientContext ctx;
  auto stream = stub->Session(&ctx);
  v1::SessionRequest req;
  *req.mutable_op() = ForwardOp(1, 1, width_);
  stream->Write(req);
  stream->WritesDone();
  v1::SessionResponse resp;
  while (stream->Read(&resp)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(NodeInputTest, EveryKindOfBadOpIsRejectedAndGoodOpsStillWork) {
  struct Case {
    const char* name;
    std::function<v1::Op()> make;
    grpc::StatusCode want;
  };
  const int w = width_;
  std::vector<Case> cases = {
      {"wrong shape",
       [&] {
         auto op = ForwardOp(1, 2, w);
         op.mutable_forward()->mutable_hidden()->set_shape(1, w - 1);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"short data",
       [&] {
         auto op = ForwardOp(1, 2, w);
         op.mutable_forward()->mutable_hidden()->mutable_data()->resize(10);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unknown dtype",
       [&] {
         auto op = ForwardOp(1, 2, w);
         op.mutable_forward()->mutable_hidden()->set_dtype(static_cast<v1::DType>(42));
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"too many rows", [&] { return ForwardOp(1, 9000, w); }, grpc::StatusCode::INVALID_ARGUMENT},
      {"negative position",
       [&] {
         auto op = ForwardOp(1, 1, w);
         op.mutable_forward()->mutable_rows(0)->set_pos(-3);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"empty sequence set",
       [&] {
         auto op = ForwardOp(1, 1, w);
         op.mutable_forward()->mutable_rows(0)->set_seqs(0);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"out_rows out of range",
       [&] {
         auto op = ForwardOp(1, 1, w);
         op.mutable_forward()->add_out_rows(5);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"out-of-order op_seq",
       [&] { return ForwardOp(3, 1, w); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"empty op",
       [&] {
         v1::Op op;
         op.set_op_seq(1);
         return op;
       },
       grpc::StatusCode::INVALID_ARGUMENT},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto stub = Stub(1);
    grpc::ClientContext ctx;
    v1::OpenSession o = Open(1, std::string("case-") + c.name);
    o.set_hop_index(0);
    auto stream = OpenOk(stub.get(), &ctx, o);
    EXPECT_EQ(SendOp(stream.get(), c.make()), static_cast<int>(c.want));
    stream->WritesDone();
    v1::SessionResponse resp;
    while (stream->Read(&resp)) {
    }
    EXPECT_TRUE(stream->Finish().ok());
  }
  // A session on the same node then works normally.
  auto stub = Stub(1);
  grpc::ClientContext ctx;
  v1::OpenSession o = Open(1, "good-after-bad");
  o.set_hop_index(0);
  auto stream = OpenOk(stub.get(), &ctx, o);
  EXPECT_EQ(SendOp(stream.get(), ForwardOp(1, 3, w)), 0);
  EXPECT_EQ(SendOp(stream.get(), ForwardOp(2, 1, w, 3)), 0);
  // Re-sending position 3 under a new op_seq is refused by the KV cache (already present).
  EXPECT_EQ(SendOp(stream.get(), ForwardOp(3, 1, w, 3)),
            static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
}

TEST_F(NodeInputTest, TheLastHopVerifiesAndRefusesVerificationsItCannotDo) {
  auto stub = Stub(1);
  grpc::ClientContext ctx;
  v1::OpenSession o = Open(1, "verify");
  o.set_hop_index(0);  // the only hop, so the last
  auto stream = OpenOk(stub.get(), &ctx, o);
  int next_pos = 0;
  uint64_t next_seq = 1;
  // A forward of `rows` rows whose out rows `out` (all when empty) are verified with `drafts`.
  auto verified = [&](int rows,
                      std::vector<int32_t> out,
                      std::vector<int32_t> drafts,
                      float temperature = 0.0f) {
    v1::Op op = ForwardOp(next_seq++, rows, width_, next_pos);
    next_pos += rows;
    for (int32_t r : out) op.mutable_forward()->add_out_rows(r);
    v1::Verify* v = op.mutable_forward()->mutable_verify();
    v->set_temperature(temperature);
    v->set_top_p(1.0f);
    v->set_repeat_penalty(1.0f);
    for (int32_t d : drafts) v->add_drafts(d);
    v1::SessionRequest req;
    *req.mutable_op() = std::move(op);
    EXPECT_TRUE(stream->Write(req));
    v1::SessionResponse resp;
    while (stream->Read(&resp)) {
      if (resp.has_error() || resp.has_result()) break;
    }
    return resp;
  };
  v1::SessionResponse good = verified(3, {}, {-1, -1, -1});
  ASSERT_TRUE(good.has_result()) << good.DebugString();
  // No draft at the first position: the target's own token, and nothing else.
  ASSERT_EQ(good.result().tokens_size(), 1);
  EXPECT_GE(good.result().tokens(0), 0);
  EXPECT_FALSE(good.result().has_hidden());
  struct Case {
    const char* name;
    int rows;
    std::vector<int32_t> out, drafts;
    float temperature;
  };
  for (const Case& c : {Case{"a draft per out row", 2, {}, {5}, 0.0f},
                        Case{"out rows at consecutive positions", 3, {0, 2}, {1, 1}, 0.0f},
                        Case{"drafts inside the vocabulary", 2, {}, {1 << 30, -1}, 0.0f},
                        Case{"a valid sampler", 1, {}, {-1}, -1.0f}}) {
    SCOPED_TRACE(c.name);
    v1::SessionResponse bad = verified(c.rows, c.out, c.drafts, c.temperature);
    ASSERT_TRUE(bad.has_error()) << bad.DebugString();
    EXPECT_EQ(bad.error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  }
  // The session goes on: the refused verifications' rows were computed like any forward's.
  v1::SessionResponse after = verified(2, {}, {-1, -1});
  ASSERT_TRUE(after.has_result()) << after.DebugString();
  EXPECT_EQ(after.result().tokens_size(), 1);
}

TEST_F(NodeInputTest, OversizedMessagesAreRefused) {
  auto stub = Stub(1);
  grpc::ClientContext ctx;
  v1::OpenSession o = Open(1, "oversized");
  o.set_hop_index(0);
  auto stream = OpenOk(stub.get(), &ctx, o);
  v1::SessionRequest req;
  *req.mutable_op() = ForwardOp(1, 1, width_);
  req.mutable_op()->mutable_forward()->mutable_hidden()->mutable_data()->resize(80 << 20);
  stream->Write(req);
  v1::SessionResponse resp;
  while (stream->Read(&resp)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(NodeInputTest, PushStreamsNeedAKnownSessionAndItsToken) {
  auto stub = Stub(1);
  auto push_status = [&](const std::string& session, const std::string& token) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto push = stub->Push(&ctx);
    v1::PushRequest req;
    req.set_session_id(session);
    req.set_token(token);
    push->Write(req);
    push->WritesDone();
    v1::PushResponse resp;
    while (push->Read(&resp)) {
    }
    return push->Finish();
  };
  EXPECT_EQ(push_status("no-such-session", "x").error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx;
  auto stream = OpenOk(stub.get(), &ctx, Open(1, "push-target"));
  EXPECT_EQ(push_status("push-target", "wrong").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(push_status("", "").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A client sends its first op without waiting for the opens, so the previous hop's push can
// reach a node before the client's open does: the node holds it, with its ops, until the open.
TEST_F(NodeInputTest, APushThatComesBeforeItsOpenWaitsForIt) {
  auto stub = Stub(1);
  grpc::ClientContext pctx;
  auto push = StartPush(stub.get(), &pctx, "early", ForwardOp(1, 3, width_));
  absl::SleepFor(absl::Milliseconds(300));  // the push and its op are there first

  grpc::ClientContext ctx;
  auto stream = OpenOk(stub.get(), &ctx, Open(1, "early"));
  v1::SessionResponse resp;
  bool answered = false;
  while (!answered && stream->Read(&resp)) {
    ASSERT_FALSE(resp.has_error()) << resp.DebugString();
    if (resp.has_result()) {
      EXPECT_EQ(resp.result().op_seq(), 1u);
      answered = true;
    }
  }
  EXPECT_TRUE(answered) << "the held op was not applied";
}

TEST_F(NodeInputTest, ANextHopEndingItsSessionIsNoError) {
  // A chain closes by telling every hop at once, so a hop often sees its next hop end the push
  // stream (its session ended) before its own client's end arrives. The hop hears of it, but it
  // is no error in the counters the coordinator shows; a broken link would be.
  auto errors = [&]() -> int64_t {
    auto coordinator = v1::Coordinator::NewStub(
        grpc::CreateChannel(swarm_->coordinator(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::SwarmSnapshot snapshot;
    if (!coordinator->GetSwarm(&ctx, v1::SwarmRequest(), &snapshot).ok()) return -1;
    for (const v1::NodeStatus& n : snapshot.nodes()) {
      if (n.first_layer() == 0) return n.load().errors();
    }
    return -1;
  };
  absl::SleepFor(absl::Seconds(1));  // heartbeats bring what earlier tests counted
  const int64_t before = errors();
  ASSERT_GE(before, 0);

  auto last_stub = Stub(1);
  grpc::ClientContext last_ctx;
  auto last = OpenOk(last_stub.get(), &last_ctx, Open(1, "ends-first"));
  auto first_stub = Stub(0);
  grpc::ClientContext first_ctx;
  v1::OpenSession open = Open(0, "ends-first");
  open.set_next_address(swarm_->nodes()[1]->address);
  auto first = OpenOk(first_stub.get(), &first_ctx, open);
  v1::SessionRequest req;
  *req.mutable_op() = ForwardOp(1, 2, width_);
  ASSERT_TRUE(first->Write(req));
  v1::SessionResponse resp;
  bool answered = false;
  while (!answered && last->Read(&resp)) answered = resp.has_result();
  ASSERT_TRUE(answered) << "the op did not come through the first hop";

  // The last hop's client ends its session first.
  last->WritesDone();
  while (last->Read(&resp)) {
  }
  EXPECT_TRUE(last->Finish().ok());
  bool told = false;
  while (!told && first->Read(&resp)) {
    if (resp.has_next_hop_lost()) {
      told = true;
      EXPECT_NE(resp.next_hop_lost().message().find("ended the session"), std::string::npos)
          << resp.next_hop_lost().message();
    }
  }
  EXPECT_TRUE(told) << "the first hop was not told that its next hop ended the session";
  first->WritesDone();
  while (first->Read(&resp)) {
  }
  EXPECT_TRUE(first->Finish().ok());
  absl::SleepFor(absl::Seconds(1));  // a few heartbeats
  EXPECT_EQ(errors(), before);
}

TEST_F(NodeInputTest, AHeldPushIsRefusedWhenItsOpenIsRefusedOrNeverComes) {
  auto stub = Stub(1);
  auto start_push = [&](grpc::ClientContext* ctx, const std::string& session) {
    return StartPush(stub.get(), ctx, session, ForwardOp(1, 1, width_));
  };
  auto finish = [](auto& push) {
    v1::PushResponse r;
    while (push->Read(&r)) {
    }
    return push->Finish();
  };

  // The open comes, but for a model this node does not serve: the push goes with it.
  grpc::ClientContext c1;
  auto refused = start_push(&c1, "refused-open");
  absl::SleepFor(absl::Milliseconds(300));
  v1::OpenSession bad = Open(1, "refused-open");
  bad.set_model_id("some-other-model");
  EXPECT_EQ(OpenStatus(bad, 1).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  grpc::Status st = finish(refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find("was refused"), std::string::npos) << st.error_message();

  // No open ever comes: refused after the node's wait (a few seconds), not kept.
  grpc::ClientContext c2;
  const absl::Time start = absl::Now();
  auto orphan = start_push(&c2, "never-opened");
  st = finish(orphan);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find("not opened within"), std::string::npos) << st.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));

  // The node serves as before.
  grpc::ClientContext c3;
  v1::OpenSession o = Open(1, "after-held");
  o.set_hop_index(0);
  auto stream = OpenOk(stub.get(), &c3, o);
  EXPECT_EQ(SendOp(stream.get(), ForwardOp(1, 2, width_)), 0);
}

TEST_F(NodeInputTest, GarbageBytesAreRejectedAndTheNodeKeepsServing) {
  // Start a real generation first and keep it going across the attacks.
  ClientOptions co;
  co.coordinators = {swarm_->coordinator()};
  co.model_path = testkit::DefaultModelPath();
  co.threads = 1;
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();
  GenerateRequest req;
  req.prompt = "Name a color.";
  req.chat = true;
  req.max_tokens = 16;
  req.sampling.temperature = 0;
  auto before = (*client)->Generate(req);
  ASSERT_TRUE(before.ok()) << before.status();

  std::mt19937 rng(5);
  for (const char* method :
       {"/strata.v1.Node/Session", "/strata.v1.Node/Push", "/strata.v1.Node/Info"}) {
    for (int round = 0; round < 5; ++round) {
      auto channel =
          grpc::CreateChannel(swarm_->nodes()[0]->address, grpc::InsecureChannelCredentials());
      grpc::GenericStub generic(channel);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::CompletionQueue cq;
      std::string junk(64 + rng() % 512, '\0');
      for (char& c : junk) c = static_cast<char>(rng());
      grpc::Slice slice(junk);
      grpc::ByteBuffer buffer(&slice, 1);
      auto call = generic.PrepareCall(&ctx, method, &cq);
      void* tag;
      bool ok;
      call->StartCall(reinterpret_cast<void*>(1));
      cq.Next(&tag, &ok);
      call->Write(buffer, reinterpret_cast<void*>(2));
      cq.Next(&tag, &ok);
      call->WritesDone(reinterpret_cast<void*>(3));
      cq.Next(&tag, &ok);
      grpc::Status status;
      call->Finish(&status, reinterpret_cast<void*>(4));
      while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(4)) {
      }
      EXPECT_FALSE(status.ok()) << method;
      cq.Shutdown();
      while (cq.Next(&tag, &ok)) {
      }
    }
  }
  auto after = (*client)->Generate(req);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->token_ids, before->token_ids);
}

}  // namespace
}  // namespace strata
