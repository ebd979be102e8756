// NCCL smoke tests on one GPU: a one-rank tensor-parallel group (all-reduce and the
// batch-invariant all-gather sum), a one-rank link sending to itself, the id's wire form, and a
// link whose peer never comes (a clear DEADLINE_EXCEEDED, not a hang).
#include <gtest/gtest.h>

#include <vector>

#include "absl/time/clock.h"
#include "kernels/cuda/nccl_link.h"
#include "tests/cuda/gpu_testing.h"

namespace strata {
namespace {

namespace cu = kernels::cuda;
using testkit::DeviceVec;

#define SKIP_WITHOUT_NCCL()                              \
  do {                                                   \
    STRATA_SKIP_WITHOUT_GPU();                           \
    auto _v = cu::NcclVersion();                         \
    if (!_v.ok()) GTEST_SKIP() << _v.status().message(); \
    std::cout << "NCCL " << *_v << "\n";                 \
  } while (0)

TEST(NcclId, SerializesAsItsBytes) {
  cu::NcclId id;
  for (size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<uint8_t>(i * 7);
  auto back = cu::NcclId::Parse(id.Serialize());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->bytes, id.bytes);
  EXPECT_EQ(cu::NcclId::Parse("short").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclTensorParallel, OneRankAllReduceAndGatherSum) {
  SKIP_WITHOUT_NCCL();
  auto group = cu::TensorParallelGroup::Create({0});
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->size(), 1);
  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.5f * static_cast<float>(i) - 3.0f;
  DeviceVec<float> buf(host);
  float* bufs[] = {buf.data()};
  const cudaStream_t streams[] = {nullptr};
  ASSERT_TRUE((*group)->AllReduceSum(bufs, host.size(), streams).ok());
  EXPECT_EQ(buf.Download(), host);

  DeviceVec<float> gather(host.size()), out(std::vector<float>(host.size(), 1.0f));
  const float* partial[] = {buf.data()};
  float* gathers[] = {gather.data()};
  float* outs[] = {out.data()};
  ASSERT_TRUE((*group)->AllGatherSum(partial, gathers, outs, host.size(), true, streams).ok());
  const std::vector<float> got = out.Download();
  for (size_t i = 0; i < host.size(); ++i) ASSERT_EQ(got[i], 1.0f + host[i]);

  EXPECT_EQ(cu::TensorParallelGroup::Create({0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NcclLink, OneRankSendsToItself) {
  SKIP_WITHOUT_NCCL();
  auto id = cu::NcclId::Create();
  ASSERT_TRUE(id.ok()) << id.status();
  // The id travels as bytes (over gRPC in a node).
  auto parsed = cu::NcclId::Parse(id->Serialize());
  ASSERT_TRUE(parsed.ok());
  auto link = cu::NcclLink::Connect(0, *parsed, 0, 1, absl::Seconds(30));
  ASSERT_TRUE(link.ok()) << link.status();
  const int64_t rows = 7, n_embd = 576;
  std::vector<float> host(rows * n_embd);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i % 1013) * 0.25f;
  DeviceVec<float> send(host), recv(host.size());
  const absl::Status st = (*link)->SendRecv(send.data(), 0, recv.data(), 0, rows, n_embd, nullptr);
  if (!st.ok()) GTEST_SKIP() << "NCCL refused a send to self on one rank: " << st;
  EXPECT_EQ(recv.Download(), host);
  EXPECT_EQ((*link)->Send(send.data(), rows, n_embd, 1, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NcclLink, MissingPeerTimesOutWithAClearStatus) {
  SKIP_WITHOUT_NCCL();
  auto id = cu::NcclId::Create();
  ASSERT_TRUE(id.ok()) << id.status();
  const absl::Time start = absl::Now();
  auto link = cu::NcclLink::Connect(0, *id, 0, 2, absl::Seconds(3));
  ASSERT_FALSE(link.ok());
  EXPECT_TRUE(link.status().code() == absl::StatusCode::kDeadlineExceeded ||
              link.status().code() == absl::StatusCode::kUnavailable)
      << link.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  std::cout << "without a peer: " << link.status() << "\n";
}

}  // namespace
}  // namespace strata
