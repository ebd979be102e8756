#include "model/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "common/logging.h"
#include "common/strings.h"

namespace strata::model {

size_t KvPageBytes(const KvLayout& layout, int page_cells) {
  size_t bytes =
      static_cast<size_t>(page_cells) * layout.n_layers * 2 * layout.kv_dim * sizeof(uint16_t);
  return std::max<size_t>(64, (bytes + 63) / 64 * 64);
}

KvPool::KvPool(size_t max_bytes) : max_bytes_(max_bytes) {}

KvPool::~KvPool() { ReleaseSpare(); }

void KvPool::ReleaseSpare() {
  for (auto& [bytes, p] : spare_) FreePage(p);
  spare_.clear();
}

uint16_t* KvPool::AllocatePage(size_t bytes) {
  return static_cast<uint16_t*>(std::aligned_alloc(64, bytes));
}

void KvPool::ZeroPage(uint16_t* page, size_t bytes) { std::memset(page, 0, bytes); }

void KvPool::FreePage(uint16_t* page) { std::free(page); }

absl::StatusOr<uint16_t*> KvPool::Allocate(size_t bytes) {
  if (used_bytes() + bytes > max_bytes_) {
    return absl::ResourceExhaustedError(StrCat("KV cache full: ",
                                               used_bytes() >> 20,
                                               " of ",
                                               max_bytes_ >> 20,
                                               " MiB in use (raise --kv-memory)"));
  }
  uint16_t* page = nullptr;
  for (size_t i = 0; i < spare_.size(); ++i) {
    if (spare_[i].first == bytes) {
      page = spare_[i].second;
      spare_[i] = spare_.back();
      spare_.pop_back();
      break;
    }
  }
  if (page == nullptr) {
    page = AllocatePage(bytes);
    if (page == nullptr) return absl::ResourceExhaustedError("KV cache: out of memory");
  }
  ZeroPage(page, bytes);
  used_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  return page;
}

void KvPool::Free(uint16_t* page, size_t bytes) {
  spare_.emplace_back(bytes, page);
  used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
}

KvCache::KvCache(KvPool* pool, KvLayout layout, int page_cells)
    : pool_(pool),
      layout_(layout),
      page_cells_(std::max(1, page_cells)),
      page_bytes_(KvPageBytes(layout, std::max(1, page_cells))) {}

KvCache::~KvCache() { Clear(); }

absl::StatusOr<std::vector<int32_t>> KvCache::AddCells(std::span<const Cell> rows) {
  // Validate against existing cells and within the batch before changing anything.
  auto key = [](SeqId s, int32_t pos) { return (static_cast<uint64_t>(s) << 32) | uint32_t(pos); };
  absl::flat_hash_set<uint64_t> present;
  for (const Cell& r : rows) {
    if (r.seqs == 0) return absl::InvalidArgumentError("a row has an empty sequence set");
    if (r.pos < 0) return absl::InvalidArgumentError(StrCat("negative position ", r.pos));
    for (SeqMask m = r.seqs; m; m &= m - 1) present.insert(key(__builtin_ctzll(m), r.pos));
  }
  size_t wanted = 0;
  for (const Cell& r : rows) wanted += __builtin_popcountll(r.seqs);
  if (present.size() != wanted) {
    return absl::InvalidArgumentError("the batch repeats a (sequence, position) pair");
  }
  for (const Cell& c : cells_) {
    if (c.seqs == 0) continue;
    for (SeqMask m = c.seqs; m; m &= m - 1) {
      if (present.contains(key(__builtin_ctzll(m), c.pos))) {
        return absl::InvalidArgumentError(StrCat("position ",
                                                 c.pos,
                                                 " of sequence ",
                                                 __builtin_ctzll(m),
                                                 " is already in the cache (truncate first)"));
      }
    }
  }
  // Find slots: free ones first, then new pages.
  std::vector<int32_t> slots;
  slots.reserve(rows.size());
  for (int32_t i = 0; i < static_cast<int32_t>(cells_.size()) && slots.size() < rows.size(); ++i) {
    if (cells_[i].seqs == 0) slots.push_back(i);
  }
  const int pc = page_cells_;
  const size_t missing = rows.size() - slots.size();
  const size_t new_pages = (missing + pc - 1) / pc;
  if (new_pages * page_bytes_ > pool_->free_bytes()) {
    return absl::ResourceExhaustedError(StrCat("KV cache full: ",
                                               rows.size(),
                                               " more cells need ",
                                               (new_pages * page_bytes_) >> 10,
                                               " KiB, ",
                                               pool_->free_bytes() >> 10,
                                               " KiB free (raise --kv-memory)"));
  }
  for (size_t p = 0; p < new_pages; ++p) {
    auto page = pool_->Allocate(page_bytes_);
    if (!page.ok()) {  // cannot happen after the check above unless another cache raced us
      return page.status();
    }
    int32_t first = static_cast<int32_t>(cells_.size());
    pages_.push_back(*page);
    cells_.resize(cells_.size() + pc);
    for (int32_t i = 0; i < pc && slots.size() < rows.size(); ++i) slots.push_back(first + i);
  }
  for (size_t i = 0; i < rows.size(); ++i) cells_[slots[i]] = rows[i];
  used_cells_ += static_cast<int32_t>(rows.size());
  return slots;
}

void KvCache::FreeSlot(int32_t cell) {
  cells_[cell] = Cell{};
  --used_cells_;
}

void KvCache::ReleaseTrailingPages() {
  const int pc = page_cells_;
  while (!pages_.empty()) {
    const size_t first = (pages_.size() - 1) * pc;
    bool empty = true;
    for (size_t i = first; i < cells_.size(); ++i) empty = empty && cells_[i].seqs == 0;
    if (!empty) break;
    pool_->Free(pages_.back(), page_bytes_);
    pages_.pop_back();
    cells_.resize(first);
  }
}

void KvCache::Truncate(SeqId seq, int32_t from_pos) {
  const SeqMask bit = SeqBit(seq);
  for (int32_t i = 0; i < static_cast<int32_t>(cells_.size()); ++i) {
    Cell& c = cells_[i];
    if ((c.seqs & bit) && c.pos >= from_pos) {
      c.seqs &= ~bit;
      if (c.seqs == 0) FreeSlot(i);
    }
  }
  ReleaseTrailingPages();
}

void KvCache::Fork(SeqId src, SeqId dst) {
  if (src == dst) return;
  Truncate(dst, 0);
  const SeqMask s = SeqBit(src), d = SeqBit(dst);
  for (Cell& c : cells_) {
    if (c.seqs & s) c.seqs |= d;
  }
}

void KvCache::Keep(SeqId seq) {
  const SeqMask bit = SeqBit(seq);
  for (int32_t i = 0; i < static_cast<int32_t>(cells_.size()); ++i) {
    Cell& c = cells_[i];
    if (c.seqs == 0) continue;
    c.seqs &= bit;
    if (c.seqs == 0) FreeSlot(i);
  }
  ReleaseTrailingPages();
}

void KvCache::Commit(SeqId seq, int32_t until_pos) {
  const SeqMask bit = SeqBit(seq);
  for (Cell& c : cells_) {
    if ((c.seqs & bit) && c.pos < until_pos) c.seqs |= SeqBit(0);
  }
  Keep(0);
}

void KvCache::FreeSlots(std::span<const int32_t> slots) {
  for (int32_t slot : slots) {
    if (slot >= 0 && slot < static_cast<int32_t>(cells_.size()) && cells_[slot].seqs != 0) {
      FreeSlot(slot);
    }
  }
  ReleaseTrailingPages();
}

void KvCache::Clear() {
  for (uint16_t* p : pages_) pool_->Free(p, page_bytes_);
  pages_.clear();
  cells_.clear();
  used_cells_ = 0;
}

int32_t KvCache::SeqLength(SeqId seq) const {
  const SeqMask bit = SeqBit(seq);
  int32_t n = 0;
  for (const Cell& c : cells_) {
    if (c.seqs & bit) n = std::max(n, c.pos + 1);
  }
  return n;
}

int32_t KvCache::SeqCells(SeqId seq) const {
  const SeqMask bit = SeqBit(seq);
  int32_t n = 0;
  for (const Cell& c : cells_) n += (c.seqs & bit) ? 1 : 0;
  return n;
}

}  // namespace strata::model
