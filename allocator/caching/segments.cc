// CachingAllocator's segments: new ones from the device, expandable growth
// and shrinking, the reserved limit, and releasing cached segments back.
#include "allocator/caching/caching_allocator.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::BlockPtr;
using caching_detail::FreeSet;
using caching_detail::Segment;
using caching_detail::SegmentPtr;

// --- new segments ----------------------------------------------------------------------

std::size_t CachingAllocator::SegmentSizeFor(std::size_t rounded) const {
  std::size_t size;
  if (rounded <= options_.small_request_max) {
    size = options_.small_segment_bytes;
  } else if (rounded < options_.large_request_own_segment_min) {
    size = options_.large_segment_bytes;
  } else {
    size = CheckedRoundUp(rounded, options_.large_segment_round).value_or(rounded);
  }
  // On a device (or under a limit) smaller than a shared segment, a request
  // gets a segment of its own size rather than an impossible one.
  return size > EffectiveLimit() ? rounded : size;
}

absl::StatusOr<Allocation> CachingAllocator::NewSegment(FreeSet& pool, Stream stream,
                                                        std::size_t rounded,
                                                        std::size_t requested, bool* oom) {
  if (options_.expandable_segments) return GrowExpandable(pool, stream, rounded, requested, oom);
  std::size_t size = SegmentSizeFor(rounded);
  // Host metadata first: if any of it throws, nothing has happened yet.
  SegmentPtr segment = MakePmrUnique<Segment>(metadata_);
  segment->small_pool = IsSmall(pool);
  BlockPtr block = NewBlock();
  block->segment = segment.get();
  block->size = size;
  BlockPtr spare = ShouldSplit(*block, rounded) ? NewBlock() : nullptr;
  ReserveLive();
  ReserveSegmentSlot();
  absl::StatusOr<void*> ptr = SegmentMemory(size, rounded, *block, spare);
  if (!ptr.ok()) {
    *oom = ptr.status().code() == absl::StatusCode::kResourceExhausted;
    return ptr.status();
  }

  // Commit: nothing below allocates or fails.
  segment->address = reinterpret_cast<std::uintptr_t>(*ptr);
  segment->size = size;
  segment->head = block.get();
  segment->next = segments_;
  if (segments_ != nullptr) segments_->prev = segment.get();
  segments_ = segment.release();
  block->address = segments_->address;
  block->stream = stream;
  Account(IsSmall(pool), [&](MemoryStats& st) {
    st.reserved_bytes.Add(static_cast<std::int64_t>(size));
    st.segments.Add(1);
    ++st.upstream_allocs;
    ++st.cache_misses;
  });
  return Commit(block.release(), std::move(spare), rounded, requested, stream);
}

// --- expandable segments ---------------------------------------------------------------

absl::StatusOr<Allocation> CachingAllocator::GrowExpandable(FreeSet& pool, Stream stream,
                                                            std::size_t rounded,
                                                            std::size_t requested, bool* oom) {
  Segment*& slot = expandable_[IsSmall(pool) ? 0 : 1];
  // Host metadata and the address reservation first: nothing changes if they fail.
  SegmentPtr fresh;
  // A fresh segment that does not make it to the commit (any return or throw
  // on the way) gives its address range back, or, if the runtime refuses (a
  // lost device), retires it to be retried like any emptied range: never
  // dropped with its reservation and chunks still held.
  struct DiscardFresh {
    SegmentPtr& fresh;
    std::pmr::vector<PmrUniquePtr<ExpandableRange>>& retired;
    ~DiscardFresh() {
      if (fresh == nullptr || fresh->range == nullptr) return;
      if (fresh->range->ReleaseEverything().ok()) return;
      try {
        retired.push_back(std::move(fresh->range));
      } catch (...) {
        // No room to remember it: its destructor retries once and reports.
      }
    }
  } discard_fresh{fresh, retired_ranges_};
  Segment* segment = slot;
  if (segment == nullptr) {
    ReserveSegmentSlot();
    fresh = MakePmrUnique<Segment>(metadata_);
    fresh->small_pool = IsSmall(pool);
    absl::StatusOr<PmrUniquePtr<ExpandableRange>> range =
        ExpandableRange::Reserve(backend_, device_, capacity_, metadata_);
    if (!range.ok()) {
      *oom = range.status().code() == absl::StatusCode::kResourceExhausted;
      return range.status();
    }
    fresh->range = *std::move(range);
    fresh->address = fresh->range->base();
    segment = fresh.get();
  }
  Block* tail = segment->head;
  while (tail != nullptr && tail->next != nullptr) tail = tail->next;
  const bool extend_tail = tail != nullptr && tail->state == BlockState::kFree &&
                           tail->stream.handle == stream.handle;
  const std::size_t have = extend_tail ? tail->size : 0;
  const std::size_t gran = segment->range->granularity();
  const std::size_t grow = have >= rounded ? 0 : CheckedRoundUp(rounded - have, gran).value_or(0);
  BlockPtr added = NewBlock();
  BlockPtr spare = NewBlock();
  ReserveLive();
  if (grow > 0) {
    const auto held = static_cast<std::size_t>(stats_.reserved_bytes.current);
    if (held + grow > EffectiveLimit() &&
        ReleaseFreeSegments(held + grow - EffectiveLimit(), segment) > 0) {
      ++stats_.cache_flushes;
    }
    if (static_cast<std::size_t>(stats_.reserved_bytes.current) + grow > EffectiveLimit()) {
      *oom = true;
      return absl::ResourceExhaustedError("reserved limit reached");
    }
    absl::Status grown = segment->range->Grow(grow);  // all-or-nothing
    if (grown.code() == absl::StatusCode::kResourceExhausted &&
        ReleaseFreeSegments(grow, segment) > 0) {
      ++stats_.cache_flushes;
      grown = segment->range->Grow(grow);
    }
    if (!grown.ok()) {
      *oom = grown.code() == absl::StatusCode::kResourceExhausted;
      return grown;  // rolled back; a fresh segment's range is released or retired
    }
  }

  // Commit: nothing below allocates or fails.
  if (fresh != nullptr) {
    fresh->next = segments_;
    if (segments_ != nullptr) segments_->prev = fresh.get();
    segments_ = slot = fresh.release();
    Account(IsSmall(pool), [](MemoryStats& st) { st.segments.Add(1); });
  }
  if (grow > 0) {
    // Re-file the tail around the link change, so split accounting stays exact.
    const bool tail_free = tail != nullptr && tail->state == BlockState::kFree;
    if (tail_free) EraseFree(tail);
    Block* b = added.release();
    b->address = segment->address + segment->size;
    b->size = grow;
    b->segment = segment;
    b->stream = stream;
    b->state = BlockState::kFree;
    b->prev = tail;
    if (tail != nullptr) {
      tail->next = b;
    } else {
      segment->head = b;
    }
    if (tail_free) InsertFree(tail);
    segment->size += grow;
    Account(IsSmall(pool), [&](MemoryStats& st) {
      st.reserved_bytes.Add(static_cast<std::int64_t>(grow));
      st.upstream_allocs += grow / gran;
      ++st.cache_misses;
    });
    ReturnToPool(b);  // merges with a free tail of this stream
  } else {
    Account(IsSmall(pool), [](MemoryStats& st) { ++st.cache_hits; });
  }
  Block* take = segment->head;
  while (take->next != nullptr) take = take->next;
  EraseFree(take);
  return Commit(take, ShouldSplit(*take, rounded) ? std::move(spare) : nullptr, rounded, requested,
                stream);
}

std::size_t CachingAllocator::ShrinkExpandable(Segment* segment, std::size_t cut) {
  Block* tail = segment->head;
  while (tail->next != nullptr) tail = tail->next;
  if (tail->state != BlockState::kFree || cut == 0 || cut > tail->size) return 0;
  // Unmapping does not wait for the device (cudaFree does): work still queued
  // on the tail's stream may touch it. That stream may have been destroyed by
  // its user since the free (a real runtime crashes on the stale handle: found
  // on an H200), so the whole device is waited for; shrinking is rare.
  if (!WaitForDeviceWork().ok()) return 0;  // cannot be sure: keep it mapped
  EraseFree(tail);
  const std::size_t before = segment->range->mapped_bytes();
  // A partial failure still releases some chunks: account for what went.
  segment->range->Shrink(cut).IgnoreError();
  const std::size_t released = before - segment->range->mapped_bytes();
  tail->size -= released;
  segment->size -= released;
  Account(segment->small_pool, [&](MemoryStats& st) {
    st.reserved_bytes.Sub(static_cast<std::int64_t>(released));
    st.upstream_frees += released / segment->range->granularity();
  });
  if (segment->size == 0) {
    for (Segment*& slot : expandable_) {
      if (slot == segment) slot = nullptr;
    }
    if (segment->prev != nullptr) segment->prev->next = segment->next;
    if (segment->next != nullptr) segment->next->prev = segment->prev;
    if (segments_ == segment) segments_ = segment->next;
    Account(segment->small_pool, [](MemoryStats& st) { st.segments.Sub(1); });
    PmrUniquePtr<ExpandableRange> range = std::move(segment->range);
    DeleteBlock(tail);
    DeleteSegment(segment);
    if (!range->ReleaseEverything().ok()) {
      try {
        retired_ranges_.push_back(std::move(range));  // retried, not forgotten
      } catch (...) {
        // No room to remember it: its destructor retries once and reports.
      }
    }
    return released;
  }
  if (tail->size == 0) {
    tail->prev->next = nullptr;
    DeleteBlock(tail);
  } else {
    InsertFree(tail);
  }
  return released;
}

absl::Status CachingAllocator::WaitForDeviceWork() {
  return CallAtBoundary("device synchronize", [&] { return backend_->DeviceSynchronize(device_); });
}

void CachingAllocator::RetryRetiredRanges() {
  for (auto it = retired_ranges_.begin(); it != retired_ranges_.end();) {
    it = (*it)->ReleaseEverything().ok() ? retired_ranges_.erase(it) : std::next(it);
  }
}

std::size_t CachingAllocator::TrimmableTailBytes() const {
  std::size_t bytes = 0;
  for (const Segment* segment : expandable_) {
    if (segment == nullptr) continue;
    const Block* tail = segment->head;
    while (tail->next != nullptr) tail = tail->next;
    if (tail->state == BlockState::kFree && tail != segment->head) {
      const std::size_t gran = segment->range->granularity();
      bytes += tail->size / gran * gran;
    }
  }
  return bytes;
}

std::size_t CachingAllocator::TrimExpandableTails(const Segment* exclude) {
  std::size_t released = 0;
  for (Segment* segment : expandable_) {
    if (segment == nullptr || segment == exclude) continue;
    Block* tail = segment->head;
    while (tail->next != nullptr) tail = tail->next;
    if (tail->state != BlockState::kFree || tail == segment->head) continue;  // whole: released elsewhere
    const std::size_t gran = segment->range->granularity();
    released += ShrinkExpandable(segment, tail->size / gran * gran);
  }
  return released;
}

// --- release ---------------------------------------------------------------------------

void CachingAllocator::ReserveSegmentSlot() {
  const auto count = static_cast<std::size_t>(stats_.segments.current);
  if (free_segments_.capacity() <= count) free_segments_.reserve(2 * count + 1);
}

const std::pmr::vector<Segment*>& CachingAllocator::FullyFreeSegmentsLruFirst() {
  free_segments_.clear();
  for (Segment* s = segments_; s != nullptr; s = s->next) {
    if (s->head->state == BlockState::kFree && s->head->next == nullptr) {
      free_segments_.push_back(s);  // capacity for every segment: cannot throw
    }
  }
  std::sort(free_segments_.begin(), free_segments_.end(),
            [](const Segment* a, const Segment* b) { return a->last_used < b->last_used; });
  return free_segments_;
}

std::size_t CachingAllocator::ReleaseFreeSegments(std::size_t enough, const Segment* exclude) {
  if (!retired_ranges_.empty()) RetryRetiredRanges();
  std::size_t released = options_.expandable_segments ? TrimExpandableTails(exclude) : 0;
  for (Segment* s : FullyFreeSegmentsLruFirst()) {
    if (released >= enough) break;
    if (s == exclude) continue;
    const std::size_t size = s->size;
    if (ReleaseSegment(s)) released += size;
  }
  return released;
}

bool CachingAllocator::ReleaseSegment(Segment* segment) {
  if (segment->range != nullptr) {
    const std::size_t size = segment->size;
    return ShrinkExpandable(segment, size) == size;
  }
  Block* block = segment->head;
  EraseFree(block);
  absl::Status st = CallAtBoundary("free", [&] {
    return backend_->Free(device_, reinterpret_cast<void*>(segment->address));
  });
  if (!st.ok()) {
    InsertFree(block);  // still ours, still cached
    return false;
  }
  if (segment->prev != nullptr) segment->prev->next = segment->next;
  if (segment->next != nullptr) segment->next->prev = segment->prev;
  if (segments_ == segment) segments_ = segment->next;
  Account(segment->small_pool, [&](MemoryStats& st) {
    st.reserved_bytes.Sub(static_cast<std::int64_t>(segment->size));
    st.segments.Sub(1);
    ++st.upstream_frees;
  });
  DeleteBlock(block);
  DeleteSegment(segment);
  return true;
}

void CachingAllocator::EnforceLimitLocked() {
  // Over the limit (it was lowered below what live blocks held): cached
  // memory above it goes back as soon as it is free.
  const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
  if (reserved > EffectiveLimit()) ReleaseFreeSegments(reserved - EffectiveLimit());
  front_over_limit_.store(OverLimitLocked(), std::memory_order_relaxed);
}

}  // namespace gpualloc
