// PlanTensorParallel: which heads, rows and columns each shard of a tensor-parallel span holds
// (host arithmetic only; runs without a GPU).
#include <gtest/gtest.h>

#include "model/cuda/tp_span.h"

namespace strata {
namespace {

using model::HParams;
using model::PlanTensorParallel;
using model::TpRange;

HParams Llama7b() {
  HParams hp;
  hp.n_layer = 32;
  hp.n_embd = 4096;
  hp.n_head = 32;
  hp.n_head_kv = 8;
  hp.head_dim = 128;
  hp.n_ff = 11008;
  return hp;
}

TEST(PlanTensorParallel, SplitsWholeKvHeadsWithTheirQueryHeads) {
  auto plans = PlanTensorParallel(Llama7b(), 2, 32);
  ASSERT_TRUE(plans.ok()) << plans.status();
  ASSERT_EQ(plans->size(), 2u);
  EXPECT_EQ((*plans)[0].n_head, 16);
  EXPECT_EQ((*plans)[0].n_head_kv, 4);
  EXPECT_EQ((*plans)[0].q, (TpRange{0, 2048}));
  EXPECT_EQ((*plans)[1].q, (TpRange{2048, 2048}));
  EXPECT_EQ((*plans)[0].kv, (TpRange{0, 512}));
  EXPECT_EQ((*plans)[1].kv, (TpRange{512, 512}));
  EXPECT_EQ((*plans)[0].ff, (TpRange{0, 5504}));
  EXPECT_EQ((*plans)[1].ff, (TpRange{5504, 5504}));
}

TEST(PlanTensorParallel, ShardsTileEveryRangeAndKeepGqaGroups) {
  const HParams hp = Llama7b();
  for (int shards : {1, 2, 4, 8}) {
    auto plans = PlanTensorParallel(hp, shards, 32);
    ASSERT_TRUE(plans.ok()) << shards << ": " << plans.status();
    int64_t q = 0, kv = 0, ff = 0;
    const int group = hp.n_head / hp.n_head_kv;
    for (const model::TpShardPlan& p : *plans) {
      EXPECT_EQ(p.q.begin, q);
      EXPECT_EQ(p.kv.begin, kv);
      EXPECT_EQ(p.ff.begin, ff);
      EXPECT_EQ(p.q.size, int64_t{p.n_head} * hp.head_dim);
      EXPECT_EQ(p.kv.size, int64_t{p.n_head_kv} * hp.head_dim);
      EXPECT_EQ(p.n_head, p.n_head_kv * group);
      // The shard's first query head belongs to its first KV head.
      EXPECT_EQ(p.q.begin / hp.head_dim / group, p.kv.begin / hp.head_dim);
      q += p.q.size;
      kv += p.kv.size;
      ff += p.ff.size;
    }
    EXPECT_EQ(q, hp.q_dim());
    EXPECT_EQ(kv, hp.kv_dim());
    EXPECT_EQ(ff, hp.n_ff);
  }
}

TEST(PlanTensorParallel, RejectsSplitsThatDoNotDivide) {
  const HParams hp = Llama7b();
  // 8 KV heads over 3 or 16 devices.
  for (int shards : {0, 3, 16}) {
    EXPECT_EQ(PlanTensorParallel(hp, shards, 32).status().code(),
              absl::StatusCode::kInvalidArgument)
        << shards;
  }
  // K-quant blocks of 256: ffn_down's 11008 columns split in two are 5504, not a multiple.
  auto k_quant = PlanTensorParallel(hp, 2, 256);
  EXPECT_EQ(k_quant.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(k_quant.status().message().find("ffn_down"), std::string::npos) << k_quant.status();
  // Heads of 16 columns: one head per shard is half a 32-column block of wo's input.
  HParams narrow;
  narrow.n_head = 4;
  narrow.n_head_kv = 4;
  narrow.head_dim = 16;
  narrow.n_ff = 256;
  EXPECT_TRUE(PlanTensorParallel(narrow, 2, 32).ok());
  auto half_block = PlanTensorParallel(narrow, 4, 32);
  EXPECT_EQ(half_block.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(half_block.status().message().find("attention output"), std::string::npos)
      << half_block.status();
}

}  // namespace
}  // namespace strata
