// The per-thread front cache (front_cache.h): the thread-local registry of
// caches, and CachingAllocator's side of it: the lock-free-of-mu_ allocate
// and free, loans, flushes, retirement and the stats the caches change.
#include "allocator/caching/front_cache.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>
#include <vector>

#include "allocator/caching/caching_allocator.h"
#include "allocator/common/node_insert.h"

namespace gpualloc {

namespace caching_detail {

constinit thread_local std::uint64_t last_front_owner_id = 0;
constinit thread_local FrontCache* last_front = nullptr;

namespace {

// The calling thread's caches, one per allocator it used; retired when the
// thread ends. The last one used is also kept in two plain thread-locals:
// the fast paths' lookup is two loads.
struct ThreadFronts {
  std::vector<std::shared_ptr<FrontCache>> fronts;
  ~ThreadFronts();
};

thread_local bool thread_ending = false;

ThreadFronts& Fronts() {
  thread_local ThreadFronts fronts;
  return fronts;
}

ThreadFronts::~ThreadFronts() {
  thread_ending = true;
  last_front_owner_id = 0;
  last_front = nullptr;
  for (const std::shared_ptr<FrontCache>& front : fronts) {
    if (front->retired.load(std::memory_order_acquire)) continue;  // its allocator is gone
    front->orphaned.store(true, std::memory_order_release);
    front->home->orphans.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace

std::uint64_t NewFrontOwnerId() noexcept {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

FrontCache* FindThisThreadsFront(std::uint64_t owner_id) noexcept {
  if (thread_ending) return nullptr;
  for (const std::shared_ptr<FrontCache>& front : Fronts().fronts) {
    if (front->owner_id == owner_id) {
      last_front_owner_id = owner_id;
      last_front = front.get();
      return last_front;
    }
  }
  return nullptr;
}

bool AdoptForThisThread(std::shared_ptr<FrontCache> front) noexcept {
  if (thread_ending) return false;
  std::vector<std::shared_ptr<FrontCache>>& fronts = Fronts().fronts;
  // Caches their allocators already retired (destroyed) are dropped here,
  // so a thread that outlives many allocators does not collect them.
  std::erase_if(fronts, [](const std::shared_ptr<FrontCache>& f) {
    return f->retired.load(std::memory_order_acquire);
  });
  try {
    fronts.push_back(front);
  } catch (...) {
    return false;
  }
  last_front_owner_id = front->owner_id;
  last_front = front.get();
  return true;
}

}  // namespace caching_detail

using caching_detail::Block;
using caching_detail::FrontCache;
using caching_detail::FrontCounts;

namespace {
FrontCounts& CountsOf(FrontCache& front, const Block& block)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu) {
  return front.counts[block.segment->small_pool ? 0 : 1];
}
}  // namespace

Block* CachingAllocator::TakeParked(FrontCache& front, std::size_t i) {
  Block* block = front.parked[i];
  std::copy(front.parked.begin() + i + 1, front.parked.begin() + front.parked_count,
            front.parked.begin() + i);
  --front.parked_count;
  front.parked_bytes -= block->size;
  if (front.parked_count == 0) front.nothing_parked.store(true, std::memory_order_relaxed);
  return block;
}

void CachingAllocator::Park(FrontCache& front, Block* block) {
  FrontCounts& counts = CountsOf(front, *block);
  counts.parked_bytes += static_cast<std::int64_t>(block->size);
  counts.parked_blocks += 1;
  counts.requested_delta -= static_cast<std::int64_t>(block->requested);
  block->requested = 0;
  block->parked = true;
  front.parked[front.parked_count++] = block;
  front.parked_bytes += block->size;
  front.nothing_parked.store(false, std::memory_order_relaxed);
}

// --- the fast paths: the thread's own cache lock only ----------------------------------

Block* CachingAllocator::AllocateFromFront(std::size_t rounded, std::size_t bytes,
                                          Stream stream) {
  FrontCache* front = caching_detail::ThisThreadsFront(front_id_);
  if (front == nullptr || front->nothing_parked.load(std::memory_order_relaxed)) return nullptr;
  SpinLockHolder lock(front->mu);
  // Newest first: the block most likely still warm, and the search a
  // repeated size ends at once.
  for (std::size_t i = front->parked_count; i-- > 0;) {
    Block* block = front->parked[i];
    if (block->size != rounded || !(block->stream == stream)) continue;
    TakeParked(*front, i);
    block->parked = false;
    block->requested = bytes;
    FrontCounts& counts = CountsOf(*front, *block);
    const auto size = static_cast<std::int64_t>(block->size);
    counts.parked_bytes -= size;
    counts.parked_blocks -= 1;
    counts.requested_delta += static_cast<std::int64_t>(bytes);
    counts.allocated_total += block->size;
    counts.requested_total += bytes;
    counts.hits += 1;
    ++front->window_hits;
    front->last_served = block;
    return block;
  }
  return nullptr;
}

bool CachingAllocator::Parkable(const Block& block, const Allocation& allocation,
                                Stream stream) const {
  // Only a free on the block's own stream, with no other stream recorded on
  // it, needs no event: the next allocation from the cache is on that
  // stream too.
  return !block.parked && allocation.bytes == block.requested && stream == block.stream &&
         block.stream_uses.empty() && block.size <= options_.front_cache_bytes;
}

bool CachingAllocator::FreeIntoFront(const Allocation& allocation, Stream stream) {
  FrontCache* front = caching_detail::ThisThreadsFront(front_id_);
  if (front == nullptr) return false;
  SpinLockHolder lock(front->mu);
  const auto address = reinterpret_cast<std::uintptr_t>(allocation.ptr);
  Block* block = front->last_served;
  if (block == nullptr || block->address != address) {
    auto it = front->loaned.find(address);
    if (it == front->loaned.end()) return false;
    block = it->second;
  }
  if (!Parkable(*block, allocation, stream)) return false;
  if (front_over_limit_.load(std::memory_order_relaxed)) return false;
  if (!HasRoomFor(*front, *block)) return false;  // the slow path makes room (under our lock)
  Park(*front, block);
  return true;
}

bool CachingAllocator::HasRoomFor(const FrontCache& front, const Block& block) const {
  return front.parked_count < options_.front_cache_blocks &&
         front.parked_bytes + block.size <= options_.front_cache_bytes;
}

// --- loans and their end (allocator lock held) -----------------------------------------

FrontCache* CachingAllocator::FrontForThisThreadLocked() {
  if (FrontCache* front = caching_detail::ThisThreadsFront(front_id_)) return front;
  try {
    auto front = std::make_shared<FrontCache>(front_id_, front_home_, metadata_);
    fronts_.push_back(front);
    if (!caching_detail::AdoptForThisThread(front)) {
      fronts_.pop_back();
      return nullptr;
    }
    return front.get();
  } catch (...) {
    return nullptr;  // no cache for this thread yet: its allocations take the slow path
  }
}

void CachingAllocator::LoanLocked(FrontCache& front, Block* block) {
  if (front.loans_to_skip > 0) {  // paused by the governor
    --front.loans_to_skip;
    return;
  }
  SpinLockHolder lock(front.mu);
  if (block->front_node.empty()) return;  // made before the caches were on: not lent
  try {
    ReserveOneMore(front.loaned);
  } catch (...) {
    return;  // a loan is an optimisation: without memory for it, the block is not lent
  }
  block->front_node.key() = block->address;
  block->front_node.mapped() = block;
  front.loaned.insert(std::move(block->front_node));  // its own node, room reserved: no-throw
  block->front = &front;
  block->parked = false;
  front.last_served = block;
  block->counted_requested = block->requested;
}

void CachingAllocator::UnloanLocked(FrontCache& front, Block* block) {
  block->front_node = front.loaned.extract(block->address);
  if (front.last_served == block) front.last_served = nullptr;
  FrontCounts& counts = CountsOf(front, *block);
  if (block->parked) {
    counts.parked_bytes -= static_cast<std::int64_t>(block->size);
    counts.parked_blocks -= 1;
  }
  // The allocator's own counter takes over the difference the cache kept.
  const std::int64_t delta = static_cast<std::int64_t>(block->requested) -
                             static_cast<std::int64_t>(block->counted_requested);
  counts.requested_delta -= delta;
  Account(block->segment->small_pool, [&](MemoryStats& st) {
    st.requested_bytes.current += delta;
    st.requested_bytes.peak = std::max(st.requested_bytes.peak, st.requested_bytes.current);
  });
  block->front = nullptr;
  block->parked = false;
  block->counted_requested = 0;
}

void CachingAllocator::ReturnParkedLocked(FrontCache& front, Block* block) {
  UnloanLocked(front, block);  // requested now 0 in the allocator's books too
  auto it = allocated_.find(block->address);
  CommitFree(it, block->stream, std::pmr::vector<Event>(metadata_), FreeKind::kParkedEarlier);
}

std::size_t CachingAllocator::FlushFrontLocked(FrontCache& front) {
  const std::size_t n = front.parked_count;
  for (std::size_t i = 0; i < n; ++i) ReturnParkedLocked(front, front.parked[i]);
  front.parked_count = 0;
  front.parked_bytes = 0;
  front.nothing_parked.store(true, std::memory_order_relaxed);
  return n;
}

std::size_t CachingAllocator::FlushFrontsLocked() {
  RetireOrphansLocked();
  std::size_t n = 0;
  for (const std::shared_ptr<FrontCache>& front : fronts_) {
    SpinLockHolder lock(front->mu);
    n += FlushFrontLocked(*front);
  }
  return n;
}

bool CachingAllocator::ParkEvictingOldestLocked(FrontCache& front, Block* block) {
  if (front.parked_count == 0) return false;
  if (!KeepsLending(front)) {
    FlushFrontLocked(front);  // the pause starts with nothing parked
    return false;
  }
  // Ends at the latest with the cache empty, which has room: Parkable
  // bounds the block by front_cache_bytes.
  while (!HasRoomFor(front, *block)) ReturnParkedLocked(front, TakeParked(front, 0));
  Park(front, block);
  return true;
}

bool CachingAllocator::KeepsLending(FrontCache& front) {
  if (++front.window_evictions < caching_detail::kFrontWindow) return true;
  const bool paid =
      std::uint64_t{front.window_hits} * caching_detail::kFrontEvictionsPerHit >=
      front.window_evictions;
  front.window_evictions = 0;
  front.window_hits = 0;
  if (paid) {
    front.failed_windows = 0;
    return true;
  }
  front.loans_to_skip = caching_detail::kFrontPauseLoans
                        << std::min(front.failed_windows, caching_detail::kFrontMaxPauseDoublings);
  ++front.failed_windows;
  return false;
}

void CachingAllocator::RetireFrontLocked(FrontCache& front) {
  {
    SpinLockHolder lock(front.mu);
    FlushFrontLocked(front);
    // Live blocks stay allocated, now in the allocator's books alone.
    while (!front.loaned.empty()) UnloanLocked(front, front.loaned.begin()->second);
    // Frees the bucket array here, under our lock, in our metadata resource.
    LiveMap(LiveMap::allocator_type(metadata_)).swap(front.loaned);
    for (int pool = 0; pool < 2; ++pool) {
      FrontCounts& counts = front.counts[pool];
      for (MemoryStats* st : {&stats_, &pool_stats_[pool]}) {
        st->allocated_bytes.total += static_cast<std::int64_t>(counts.allocated_total);
        st->requested_bytes.total += static_cast<std::int64_t>(counts.requested_total);
        st->active_blocks.total += static_cast<std::int64_t>(counts.hits);
        st->cache_hits += counts.hits;
      }
      counts = FrontCounts{};
    }
    front.retired.store(true, std::memory_order_release);
  }
  // (Over a lowered limit, the segments its parked blocks emptied went back
  // in their frees: CommitFree enforces the limit.)
  std::erase_if(fronts_, [&](const std::shared_ptr<FrontCache>& f) { return f.get() == &front; });
}

void CachingAllocator::RetireOrphansLocked() {
  if (front_home_->orphans.load(std::memory_order_acquire) == 0) return;
  front_home_->orphans.store(0, std::memory_order_relaxed);  // a later end counts again
  for (std::size_t i = 0; i < fronts_.size();) {
    if (fronts_[i]->orphaned.load(std::memory_order_acquire)) {
      RetireFrontLocked(*fronts_[i]);  // removes it from fronts_
    } else {
      ++i;
    }
  }
}

// --- what the caches change in the stats -----------------------------------------------

void CachingAllocator::AddFrontCounts(const FrontCache& front, MemoryStats& stats, int pool) {
  for (int p = 0; p < 2; ++p) {
    if (pool >= 0 && p != pool) continue;
    const FrontCounts& counts = front.counts[p];
    stats.allocated_bytes.current -= counts.parked_bytes;
    stats.active_blocks.current -= counts.parked_blocks;
    stats.requested_bytes.current += counts.requested_delta;
    stats.requested_bytes.peak =
        std::max(stats.requested_bytes.peak, stats.requested_bytes.current);
    stats.allocated_bytes.total += static_cast<std::int64_t>(counts.allocated_total);
    stats.requested_bytes.total += static_cast<std::int64_t>(counts.requested_total);
    stats.active_blocks.total += static_cast<std::int64_t>(counts.hits);
    stats.cache_hits += counts.hits;
    stats.free_bytes += static_cast<std::uint64_t>(counts.parked_bytes);
  }
  // Parked blocks are free memory: split ones count as inactive split bytes.
  for (std::size_t i = 0; i < front.parked_count; ++i) {
    const Block* block = front.parked[i];
    if (pool >= 0 && (block->segment->small_pool ? 0 : 1) != pool) continue;
    if (block->is_split()) {
      stats.inactive_split_bytes.current += static_cast<std::int64_t>(block->size);
      stats.inactive_split_bytes.peak =
          std::max(stats.inactive_split_bytes.peak, stats.inactive_split_bytes.current);
    }
    if (pool < 0) {
      stats.largest_free_block = std::max<std::uint64_t>(stats.largest_free_block, block->size);
    }
  }
}

MemoryStats CachingAllocator::StatsWithFrontsLocked(int pool) const {
  MemoryStats stats = pool < 0 ? stats_ : pool_stats_[pool];
  if (pool < 0) stats.largest_free_block = LargestFreeBlockLocked();
  if (fronts_.empty()) return stats;
  caching_detail::AllFrontsLocked held(fronts_);
  for (const std::shared_ptr<FrontCache>& front : fronts_) {
    front->mu.AssertHeld();
    AddFrontCounts(*front, stats, pool);
  }
  return stats;
}

}  // namespace gpualloc
