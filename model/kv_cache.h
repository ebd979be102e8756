// Paged key/value cache following DESIGN.md's node KV contract.
//
// A KvPool owns a node's KV memory budget: pages handed out on demand up to a byte cap, so memory
// grows with the text actually held, never reserved for a maximum length. A KvCache is
// one session's view: cells (logical position, set of sequence ids), each holding K and V (f16)
// for every layer of the span. Sequence 0 is the committed text; other ids hold drafts.
//
// A row at position p of sequence s attends to every cell tagged s with pos <= p. Threading: a
// pool and its caches are used by one worker thread; the counters may be read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace strata::model {

using SeqId = int;
using SeqMask = uint64_t;
constexpr int kMaxSeqs = 64;
inline SeqMask SeqBit(SeqId s) { return SeqMask{1} << s; }

struct KvLayout {
  int n_layers = 0;  // layers in the span
  int kv_dim = 0;    // n_head_kv * head_dim
};

// Bytes of one page of `page_cells` cells for `layout` (K and V, f16, every layer).
size_t KvPageBytes(const KvLayout& layout, int page_cells);

class KvPool {
 public:
  // `max_bytes` caps the memory of all pages of all caches drawing from this pool.
  explicit KvPool(size_t max_bytes);
  virtual ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  size_t capacity_bytes() const { return max_bytes_; }
  size_t used_bytes() const { return used_bytes_.load(std::memory_order_relaxed); }
  size_t free_bytes() const { return max_bytes_ - used_bytes(); }

  // A zeroed page of `bytes`; RESOURCE_EXHAUSTED when it would exceed the cap.
  absl::StatusOr<uint16_t*> Allocate(size_t bytes);
  void Free(uint16_t* page, size_t bytes);

 protected:
  // Where pages live: host memory here; a device pool overrides these three (and calls
  // ReleaseSpare() from its destructor, since a base destructor cannot reach them).
  virtual uint16_t* AllocatePage(size_t bytes);
  virtual void ZeroPage(uint16_t* page, size_t bytes);
  virtual void FreePage(uint16_t* page);
  void ReleaseSpare();

 private:
  size_t max_bytes_;
  std::atomic<size_t> used_bytes_{0};
  std::vector<std::pair<size_t, uint16_t*>> spare_;  // freed pages kept for reuse, by size
};

class KvCache {
 public:
  struct Cell {
    int32_t pos = 0;
    SeqMask seqs = 0;  // 0: the slot is free
  };

  // A cache for `layout` drawing pages of `page_cells` cells from `pool`.
  KvCache(KvPool* pool, KvLayout layout, int page_cells = 32);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Adds one cell per row and returns their slot indices. All or nothing: RESOURCE_EXHAUSTED when
  // the pool cannot supply the pages, INVALID_ARGUMENT when a (sequence, position) pair is already
  // present or repeated, a mask is empty, or a position is negative.
  absl::StatusOr<std::vector<int32_t>> AddCells(std::span<const Cell> rows);

  // Drops sequence `seq` from cells with pos >= from_pos; slots left with no sequence are freed.
  void Truncate(SeqId seq, int32_t from_pos);
  // Makes `dst` share every cell of `src` (copy-on-write by tagging; no data copied). `dst` is
  // cleared first.
  void Fork(SeqId src, SeqId dst);
  // Removes every sequence but `seq` (KEEP).
  void Keep(SeqId seq);
  // Cells of `seq` at positions below `until_pos` join sequence 0; then every sequence but 0 is
  // dropped (COMMIT of an accepted draft branch).
  void Commit(SeqId seq, int32_t until_pos);
  // Frees the given slots (cells a cancelled or failed forward added).
  void FreeSlots(std::span<const int32_t> slots);
  // Frees everything.
  void Clear();

  const KvLayout& layout() const { return layout_; }
  int page_cells() const { return page_cells_; }
  size_t page_bytes() const { return page_bytes_; }

  // One past the highest position held for `seq`, 0 when empty.
  int32_t SeqLength(SeqId seq) const;
  // Number of cells tagged `seq`.
  int32_t SeqCells(SeqId seq) const;

  const std::vector<Cell>& cells() const { return cells_; }
  int32_t used_cells() const { return used_cells_; }
  size_t pages() const { return pages_.size(); }

  // f16 key / value vectors (kv_dim values) of slot `cell` for span layer `layer`.
  uint16_t* K(int32_t cell, int layer) const { return Slot(cell, layer, 0); }
  uint16_t* V(int32_t cell, int layer) const { return Slot(cell, layer, 1); }

 private:
  uint16_t* Slot(int32_t cell, int layer, int which) const {
    const int pc = page_cells_;
    const size_t kv = static_cast<size_t>(layout_.kv_dim);
    uint16_t* page = pages_[cell / pc];
    return page + ((static_cast<size_t>(layer) * 2 + which) * pc + cell % pc) * kv;
  }
  void FreeSlot(int32_t cell);
  void ReleaseTrailingPages();

  KvPool* pool_;
  KvLayout layout_;
  int page_cells_;
  size_t page_bytes_;
  std::vector<Cell> cells_;       // slot -> cell; size is a multiple of page_cells
  std::vector<uint16_t*> pages_;  // slot / page_cells -> page
  int32_t used_cells_ = 0;
};

}  // namespace strata::model
