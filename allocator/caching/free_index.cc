// CachingAllocator's free index: blocks and their best-fit sets (by stream,
// size, address), the split and merge rules, and the in-place split and
// merge that keep the common pair free of set rebalancing.
#include "allocator/caching/caching_allocator.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "allocator/common/node_insert.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::BlockPtr;
using caching_detail::FreeSet;
using caching_detail::LiveMap;

// --- blocks ----------------------------------------------------------------------------

BlockPtr CachingAllocator::NewBlock() {
  if (!spare_blocks_.empty()) {  // the hot path: a block (and nodes) merged away earlier
    BlockPtr block(spare_blocks_.back(), PmrDeleter<Block>{metadata_});
    spare_blocks_.pop_back();
    return block;
  }
  // Room to keep merged-away blocks for reuse, reserved while failing is
  // harmless, so RecycleBlock never allocates.
  if (spare_blocks_.capacity() < kSpareBlocks) spare_blocks_.reserve(kSpareBlocks);
  BlockPtr block = MakePmrUnique<Block>(metadata_, metadata_);
  // Give the block its own FreeSet and LiveMap nodes now, while failing is
  // still harmless.
  block->node = MakeNode(small_, block.get());
  block->live_node = MakeNode(allocated_, std::uintptr_t{0}, block.get());
  // And its node for a thread's front cache, so a loan allocates nothing.
  if (options_.front_cache_blocks > 0) {
    block->front_node = MakeNode(allocated_, std::uintptr_t{0}, block.get());
  }
  return block;
}

void CachingAllocator::RecycleBlock(Block* block) noexcept {
  if (spare_blocks_.size() == spare_blocks_.capacity()) {
    DeleteBlock(block);
    return;
  }
  // Back to a new block's state, keeping its nodes and vector capacity.
  block->address = 0;
  block->size = 0;
  block->requested = 0;
  block->stream = Stream{};
  block->state = BlockState::kFree;
  block->segment = nullptr;
  block->prev = block->next = nullptr;
  block->stream_uses.clear();
  block->pending_events.clear();
  block->pending_prev = block->pending_next = nullptr;
  block->free_epoch = 0;
  spare_blocks_.push_back(block);
}

void CachingAllocator::InsertFree(Block* block) {
  FreeSet& pool = block->segment->small_pool ? small_ : large_;
  block->node.value() = block;
  pool.insert(std::move(block->node));
  CountFree(*block, /*entering=*/true);
}

void CachingAllocator::EraseFree(Block* block) {
  FreeSet& pool = block->segment->small_pool ? small_ : large_;
  block->node = pool.extract(block);
  CountFree(*block, /*entering=*/false);
}

void CachingAllocator::CountFree(const Block& block, bool entering) {
  const auto size = static_cast<std::int64_t>(block.size);
  Account(block.segment->small_pool, [&](MemoryStats& st) {
    if (entering) {
      st.free_bytes += block.size;
      if (block.is_split()) st.inactive_split_bytes.Add(size);
    } else {
      st.free_bytes -= block.size;
      if (block.is_split()) st.inactive_split_bytes.Sub(size);
    }
  });
}

// --- split rules -----------------------------------------------------------------------

bool CachingAllocator::FitsSplitRules(const Block& block, std::size_t rounded) const {
  const std::size_t max_split = options_.max_split_bytes;
  if (rounded < max_split && block.size >= max_split) return false;
  if (rounded >= max_split && block.size >= rounded + options_.large_segment_bytes) return false;
  return true;
}

bool CachingAllocator::ShouldSplit(const Block& block, std::size_t rounded) const {
  if (block.size >= options_.max_split_bytes) return false;
  const std::size_t remaining = block.size - rounded;
  if (block.segment != nullptr && block.segment->range != nullptr) {
    return remaining >= options_.min_block_bytes;  // the tail stays growable
  }
  return block.segment != nullptr && block.segment->small_pool
             ? remaining >= options_.min_block_bytes
             : remaining > options_.small_request_max;
}

// --- finding, splitting, merging -------------------------------------------------------

Block* CachingAllocator::FindFree(FreeSet& pool, Stream stream, std::size_t rounded) {
  Block probe;
  probe.stream = stream;
  probe.size = rounded;
  auto it = pool.lower_bound(&probe);
  if (it == pool.end() || (*it)->stream.handle != stream.handle) return nullptr;
  return FitsSplitRules(**it, rounded) ? *it : nullptr;
}

Block* CachingAllocator::SplitFrontInPlace(FreeSet& pool, Block* free_block, BlockPtr& spare,
                                           std::size_t rounded) {
  if (free_block->segment->range != nullptr) return nullptr;  // expandable: the general path
  Block* f = free_block;
  const std::size_t rest = f->size - rounded;
  // The remainder keeps its node if its smaller key still sorts after its
  // predecessor (its successor sorted after the larger key already).
  auto it = pool.find(f);
  if (it != pool.begin() &&
      !(caching_detail::KeyOf(**std::prev(it)) <
        caching_detail::FreeKey{f->stream.handle, rest, f->address + rounded})) {
    return nullptr;
  }
  CountFree(*f, /*entering=*/false);  // counted again below, with its new size
  Block* front = spare.release();
  front->address = f->address;
  front->size = rounded;
  front->segment = f->segment;
  front->stream = f->stream;
  front->state = BlockState::kAllocated;
  front->prev = f->prev;
  front->next = f;
  if (f->prev != nullptr) {
    f->prev->next = front;
  } else {
    f->segment->head = front;
  }
  f->prev = front;
  f->address += rounded;
  f->size = rest;
  CountFree(*f, /*entering=*/true);
  return front;
}

bool CachingAllocator::AbsorbIntoNextInPlace(Block* block) {
  Block* next = block->next;
  if (block->segment->range != nullptr) return false;  // expandable: the general path
  FreeSet& pool = next->segment->small_pool ? small_ : large_;
  auto it = pool.find(next);
  const std::size_t size = next->size + block->size;
  // The larger key must still sort before the successor (the predecessor
  // sorted before the smaller one already).
  if (auto after = std::next(it);
      after != pool.end() && !(caching_detail::FreeKey{next->stream.handle, size, block->address} <
                               caching_detail::KeyOf(**after))) {
    return false;
  }
  CountFree(*next, /*entering=*/false);  // counted again below, with its new size
  next->address = block->address;
  next->size = size;
  next->free_epoch = std::max(next->free_epoch, block->free_epoch);
  next->prev = block->prev;
  if (block->prev != nullptr) {
    block->prev->next = next;
  } else {
    block->segment->head = next;
  }
  CountFree(*next, /*entering=*/true);
  RecycleBlock(block);
  return true;
}

void CachingAllocator::ReturnToPool(Block* block) {
  block->state = BlockState::kFree;
  auto mergeable = [&](Block* other) {
    return other != nullptr && other->state == BlockState::kFree &&
           other->stream.handle == block->stream.handle;
  };
  // The common free: only the right neighbour merges, and it takes this
  // block in without leaving its pool when its place in the order holds.
  if (mergeable(block->next) && !mergeable(block->prev) && AbsorbIntoNextInPlace(block)) return;
  if (Block* next = block->next; mergeable(next)) {
    EraseFree(next);
    block->size += next->size;
    block->free_epoch = std::max(block->free_epoch, next->free_epoch);
    block->next = next->next;
    if (next->next != nullptr) next->next->prev = block;
    RecycleBlock(next);
  }
  if (Block* prev = block->prev; mergeable(prev)) {
    EraseFree(prev);
    prev->size += block->size;
    prev->free_epoch = std::max(prev->free_epoch, block->free_epoch);
    prev->next = block->next;
    if (block->next != nullptr) block->next->prev = prev;
    RecycleBlock(block);
    block = prev;
  }
  InsertFree(block);
}

std::size_t CachingAllocator::LargestFreeBlockLocked() const {
  std::size_t largest = 0;
  Block probe;
  for (const FreeSet* pool : {&small_, &large_}) {
    // The last block of each stream's run is its largest.
    for (auto it = pool->begin(); it != pool->end();) {
      probe.stream = (*it)->stream;
      probe.size = std::numeric_limits<std::size_t>::max();
      probe.address = std::numeric_limits<std::uintptr_t>::max();
      auto end = pool->upper_bound(&probe);
      largest = std::max(largest, (*std::prev(end))->size);
      it = end;
    }
  }
  return largest;
}

}  // namespace gpualloc
