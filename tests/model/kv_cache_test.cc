#include "model/kv_cache.h"

#include <gtest/gtest.h>

#include <vector>

namespace strata::model {
namespace {

constexpr KvLayout kLayout{2, 8};  // 2 layers, kv_dim 8: 64 bytes per cell

std::vector<KvCache::Cell> Rows(int32_t from, int32_t to, SeqMask seqs) {
  std::vector<KvCache::Cell> rows;
  for (int32_t p = from; p < to; ++p) rows.push_back({p, seqs});
  return rows;
}

TEST(KvCacheTest, GrowsByPagesNotReservation) {
  KvPool pool(1 << 20);
  KvCache cache(&pool, kLayout, /*page_cells=*/4);
  EXPECT_EQ(cache.pages(), 0u);
  EXPECT_EQ(pool.used_bytes(), 0u);
  ASSERT_TRUE(cache.AddCells(Rows(0, 3, 1)).ok());
  EXPECT_EQ(cache.pages(), 1u);
  ASSERT_TRUE(cache.AddCells(Rows(3, 9, 1)).ok());
  EXPECT_EQ(cache.pages(), 3u);
  EXPECT_EQ(pool.used_bytes(), 3 * cache.page_bytes());
  EXPECT_EQ(cache.SeqLength(0), 9);
}

TEST(KvCacheTest, FullPoolIsResourceExhaustedAndChangesNothing) {
  const size_t page = KvPageBytes(kLayout, 4);
  KvPool small(2 * page);
  KvCache cache(&small, kLayout, 4);
  ASSERT_TRUE(cache.AddCells(Rows(0, 6, 1)).ok());
  auto st = cache.AddCells(Rows(6, 9, 1));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.used_cells(), 6);
  EXPECT_EQ(cache.SeqLength(0), 6);
  // Two more still fit in the second page.
  EXPECT_TRUE(cache.AddCells(Rows(6, 8, 1)).ok());
}

TEST(KvCacheTest, RejectsDuplicatePositionsAndBadRows) {
  KvPool pool(1 << 20);
  KvCache cache(&pool, kLayout, 4);
  ASSERT_TRUE(cache.AddCells(Rows(0, 4, 1)).ok());
  EXPECT_EQ(cache.AddCells(Rows(3, 5, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.AddCells(Rows(-1, 0, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.AddCells(Rows(9, 10, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<KvCache::Cell> dup = {{7, 1}, {7, 1}};
  EXPECT_EQ(cache.AddCells(dup).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.used_cells(), 4);
  // The same position in another sequence is fine.
  EXPECT_TRUE(cache.AddCells(Rows(3, 5, SeqBit(1))).ok());
}

TEST(KvCacheTest, TruncateFreesCellsAndTrailingPages) {
  KvPool pool(1 << 20);
  KvCache cache(&pool, kLayout, 4);
  ASSERT_TRUE(cache.AddCells(Rows(0, 10, 1)).ok());
  cache.Truncate(0, 5);
  EXPECT_EQ(cache.SeqLength(0), 5);
  EXPECT_EQ(cache.used_cells(), 5);
  EXPECT_EQ(cache.pages(), 2u);
  // Re-adding the truncated positions works.
  EXPECT_TRUE(cache.AddCells(Rows(5, 10, 1)).ok());
  cache.Truncate(0, 0);
  EXPECT_EQ(cache.used_cells(), 0);
  EXPECT_EQ(cache.pages(), 0u);
  EXPECT_EQ(pool.used_bytes(), 0u);
}

TEST(KvCacheTest, ForkSharesWithoutCopyAndBranchesDiverge) {
  KvPool pool(1 << 20);
  KvCache cache(&pool, kLayout, 4);
  auto slots = cache.AddCells(Rows(0, 6, 1));
  ASSERT_TRUE(slots.ok());
  cache.Fork(0, 3);
  EXPECT_EQ(cache.used_cells(), 6);  // tags only
  EXPECT_EQ(cache.SeqLength(3), 6);
  EXPECT_EQ(cache.SeqCells(3), 6);
  // Branch 3 drops its tail and grows differently; branch 0 is unaffected.
  cache.Truncate(3, 4);
  ASSERT_TRUE(cache.AddCells(Rows(4, 8, SeqBit(3))).ok());
  EXPECT_EQ(cache.SeqLength(0), 6);
  EXPECT_EQ(cache.SeqLength(3), 8);
  EXPECT_EQ(cache.used_cells(), 10);
  // Keep(3) drops sequence 0's private cells (positions 4 and 5).
  cache.Keep(3);
  EXPECT_EQ(cache.SeqCells(0), 0);
  EXPECT_EQ(cache.used_cells(), 8);
}

TEST(KvCacheTest, FreeSlotsUndoesAnAppend) {
  KvPool pool(1 << 20);
  KvCache cache(&pool, kLayout, 4);
  ASSERT_TRUE(cache.AddCells(Rows(0, 3, 1)).ok());
  auto added = cache.AddCells(Rows(3, 7, 1));
  ASSERT_TRUE(added.ok());
  cache.FreeSlots(*added);
  EXPECT_EQ(cache.used_cells(), 3);
  EXPECT_EQ(cache.SeqLength(0), 3);
  EXPECT_EQ(cache.pages(), 1u);
}

TEST(KvCacheTest, DestructionReturnsPagesToThePool) {
  KvPool pool(1 << 20);
  {
    KvCache a(&pool, kLayout, 4), b(&pool, kLayout, 4);
    ASSERT_TRUE(a.AddCells(Rows(0, 9, 1)).ok());
    ASSERT_TRUE(b.AddCells(Rows(0, 2, 1)).ok());
    EXPECT_EQ(pool.used_bytes(), 4 * a.page_bytes());
  }
  EXPECT_EQ(pool.used_bytes(), 0u);
}

}  // namespace
}  // namespace strata::model
