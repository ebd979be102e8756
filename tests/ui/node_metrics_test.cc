// A node's /metrics and /healthz (NodeOptions::http), in process with a tiny model: rows and
// batches, the batch-time histogram, and errors counted by status code.
#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "model/llama.h"
#include "node/node_server.h"
#include "strata/v1/node.grpc.pb.h"
#include "tests/testing/tiny_model.h"
#include "tests/ui/prom_text.h"
#include "transport/tensor_codec.h"

namespace strata::node {
namespace {

using Stream = grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>;
using strata::testkit::ParsePromText;
using strata::testkit::PromText;
using ::testing::HasSubstr;

class NodeMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testkit::TinyModelSpec spec;
    path_ = testkit::TempPath(".gguf");
    ASSERT_TRUE(testkit::WriteTinyModel(spec, path_).ok());
    NodeOptions o;
    o.model_path = path_;
    o.auto_span = false;
    o.first_layer = 0;
    o.last_layer = spec.n_layer;
    o.node_id = "metrics-node";
    o.threads = 1;
    o.http = "127.0.0.1:0";
    o.worker.kv_bytes = size_t{16} << 20;
    auto node = NodeServer::Start(o);
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    ASSERT_FALSE(node_->http_address().empty());
    const std::string http = node_->http_address();
    http_ = std::make_unique<httplib::Client>(http.substr(0, http.rfind(':')),
                                              std::stoi(http.substr(http.rfind(':') + 1)));
    http_->set_read_timeout(10);
    stub_ = v1::Node::NewStub(
        grpc::CreateChannel(node_->address(), grpc::InsecureChannelCredentials()));
    width_ = spec.n_embd;
  }

  PromText Metrics() {
    httplib::Result r = http_->Get("/metrics");
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, 200);
    return ParsePromText(r->body);
  }

  v1::OpenSession Open(const std::string& id) {
    v1::OpenSession o;
    o.set_protocol_version(v1::PROTOCOL_VERSION_1);
    o.set_session_id(id);
    o.set_token("t");
    o.set_model_id(node_->model().id());
    o.set_first_layer(node_->first_layer());
    o.set_last_layer(node_->last_layer());
    return o;
  }

  v1::Op Forward(uint64_t seq, int rows, int first_pos) {
    v1::Op op;
    op.set_op_seq(seq);
    std::vector<float> hidden(static_cast<size_t>(rows) * width_, 0.01f);
    for (int i = 0; i < rows; ++i) {
      v1::RowMeta* m = op.mutable_forward()->add_rows();
      m->set_pos(first_pos + i);
      m->set_seqs(1);
    }
    transport::EncodeRows(
        hidden.data(), rows, width_, v1::DTYPE_F32, op.mutable_forward()->mutable_hidden());
    return op;
  }

  // Sends `op` and returns the OpError code it got (0 for a result).
  int Send(Stream* s, v1::Op op) {
    v1::SessionRequest req;
    *req.mutable_op() = std::move(op);
    EXPECT_TRUE(s->Write(req));
    v1::SessionResponse resp;
    while (s->Read(&resp)) {
      if (resp.has_error()) return resp.error().code();
      if (resp.has_result() || resp.has_done()) return 0;
    }
    return -1;
  }

  std::string path_;
  std::unique_ptr<NodeServer> node_;
  std::unique_ptr<httplib::Client> http_;
  std::unique_ptr<v1::Node::Stub> stub_;
  int width_ = 0;
};

TEST_F(NodeMetricsTest, HealthzAndStaticFacts) {
  httplib::Result r = http_->Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "ok\n");
  PromText m = Metrics();
  EXPECT_EQ(m.Get("strata_node_up_state", {{"state", "online"}}), 1);
  EXPECT_EQ(m.Get("strata_node_first_layer"), 0);
  EXPECT_EQ(m.Get("strata_node_last_layer"), 4);
  EXPECT_EQ(m.Get("strata_node_kv_capacity_bytes"), 16 << 20);
  EXPECT_EQ(m.Get("strata_node_rows_total"), 0);
  ASSERT_EQ(m.All("strata_node_info", {{"node_id", "metrics-node"}}).size(), 1u);
  EXPECT_GT(m.Get("strata_node_layer_seconds", {{"kind", "decode"}}).value_or(0), 0);
  EXPECT_EQ(m.types["strata_node_batch_seconds"], "histogram");
  EXPECT_EQ(m.types["strata_node_rows_total"], "counter");
}

TEST_F(NodeMetricsTest, CountsRowsBatchesAndErrorsByCode) {
  // A refused open: the stream ends with FAILED_PRECONDITION.
  {
    v1::OpenSession o = Open("old-protocol");
    o.set_protocol_version(static_cast<v1::ProtocolVersion>(9));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto s = stub_->Session(&ctx);
    v1::SessionRequest req;
    *req.mutable_open() = o;
    s->Write(req);
    s->WritesDone();
    v1::SessionResponse resp;
    while (s->Read(&resp)) {
    }
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // A good session: two forwards, then an op out of order (an OpError INVALID_ARGUMENT).
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto s = stub_->Session(&ctx);
    v1::SessionRequest req;
    *req.mutable_open() = Open("good");
    ASSERT_TRUE(s->Write(req));
    v1::SessionResponse resp;
    ASSERT_TRUE(s->Read(&resp));
    ASSERT_TRUE(resp.has_opened());
    EXPECT_EQ(Send(s.get(), Forward(1, 5, 0)), 0);
    EXPECT_EQ(Send(s.get(), Forward(2, 1, 5)), 0);
    EXPECT_EQ(Send(s.get(), Forward(7, 1, 6)),
              static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    s->WritesDone();
    while (s->Read(&resp)) {
    }
    EXPECT_TRUE(s->Finish().ok());
  }
  PromText m = Metrics();
  EXPECT_EQ(m.Get("strata_node_rows_total"), 6);
  EXPECT_EQ(m.Get("strata_node_batches_total"), 2);
  EXPECT_EQ(m.Get("strata_node_rpc_errors_total",
                  {{"method", "Session"}, {"code", "FAILED_PRECONDITION"}}),
            1);
  EXPECT_EQ(m.Get("strata_node_op_errors_total", {{"code", "INVALID_ARGUMENT"}}), 1);
  EXPECT_GE(m.Get("strata_node_errors_total").value_or(0), 2);
  EXPECT_GT(m.Get("strata_node_last_batch_seconds").value_or(0), 0);
  // The sampler has seen at least one batch; the histogram's buckets are cumulative.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (Metrics().Get("strata_node_batch_seconds_count").value_or(0) < 1 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  m = Metrics();
  const double count = m.Get("strata_node_batch_seconds_count").value_or(0);
  EXPECT_GE(count, 1);
  EXPECT_LE(count, 2);
  auto buckets = m.All("strata_node_batch_seconds_bucket");
  ASSERT_FALSE(buckets.empty());
  EXPECT_EQ(buckets.back().labels["le"], "+Inf");
  EXPECT_EQ(buckets.back().value, count);
}

}  // namespace
}  // namespace strata::node
