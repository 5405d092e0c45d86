// CachingAllocator's entry points: creation and teardown, allocate and free
// (the flow through the free index, stream ordering and segments), the
// public controls, and what it reports (stats, snapshots, the recorder).
#include "allocator/caching/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/node_insert.h"
#include "allocator/common/status_macros.h"
#include "allocator/policy/allocation_tag.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::BlockPtr;
using caching_detail::FreeSet;
using caching_detail::LiveMap;
using caching_detail::Segment;

// --- creation and teardown -------------------------------------------------------------

absl::StatusOr<std::unique_ptr<CachingAllocator>> CachingAllocator::Create(
    std::shared_ptr<Backend> backend, DeviceIndex device, CachingOptions options) {
  if (backend == nullptr) return absl::InvalidArgumentError("CachingAllocator: null backend");
  GPUALLOC_RETURN_IF_ERROR(options.Validate());
  GPUALLOC_ASSIGN_OR_RETURN(
      DeviceProperties props,
      CallAtBoundary("CachingAllocator: querying the device",
                     [&] { return backend->GetDeviceProperties(device); }));
  if (options.expandable_segments && !props.supports_virtual_memory) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expandable segments need a backend with virtual memory; device %d of '%s' has none",
        device, backend->name()));
  }
  if (props.alignment == 0 || options.min_block_bytes % props.alignment != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "min_block_bytes (%d) must be a multiple of the device's alignment (%d)",
        options.min_block_bytes, props.alignment));
  }
  return std::unique_ptr<CachingAllocator>(
      new CachingAllocator(std::move(backend), device, options, props.total_bytes,
                           props.alignment));
}

CachingAllocator::CachingAllocator(std::shared_ptr<Backend> backend, DeviceIndex device,
                                   CachingOptions options, std::size_t capacity,
                                   std::size_t alignment)
    : backend_(std::move(backend)),
      device_(device),
      options_(options),
      capacity_(capacity),
      alignment_(alignment),
      metadata_(MetadataResourceOr(options.metadata_resource)),
      small_(FreeSet::allocator_type(metadata_)),
      large_(FreeSet::allocator_type(metadata_)),
      allocated_(LiveMap::allocator_type(metadata_)),
      retired_ranges_(metadata_),
      markers_(metadata_),
      spare_events_(metadata_),
      spare_blocks_(metadata_),
      free_segments_(metadata_),
      tags_(metadata_),
      limit_(options.reserved_limit),
      front_id_(caching_detail::NewFrontOwnerId()),
      front_home_(std::make_shared<caching_detail::FrontHome>()),
      front_serving_(options.front_cache_blocks > 0),
      fronts_(metadata_) {}

CachingAllocator::~CachingAllocator() {
  MutexLock lock(mu_);
  // Parked blocks are free, not leaks; loaned live ones are the caller's.
  while (!fronts_.empty()) RetireFrontLocked(*fronts_.back());
  WaitForAllPending().IgnoreError();
  CallAtBoundary("device synchronize", [&] { return backend_->DeviceSynchronize(device_); })
      .IgnoreError();
  if (!allocated_.empty()) {
    std::fprintf(stderr,
                 "CachingAllocator(device %d): %zu allocations (%lld bytes) still live at "
                 "destruction: leaked by the caller; their segments are released.\n",
                 device_, allocated_.size(),
                 static_cast<long long>(stats_.allocated_bytes.current));
  }
  for (Block* b = pending_; b != nullptr; b = b->pending_next) {
    for (Event e : b->pending_events) DestroyEventQuietly(e);
  }
  DropMarkers();  // before the spare events, which keep what it cannot destroy
  while (segments_ != nullptr) {
    Segment* s = segments_;
    segments_ = s->next;
    absl::Status st = absl::OkStatus();
    if (s->range != nullptr) {
      s->range.reset();  // unmaps and releases; reports its own failures
    } else {
      st = CallAtBoundary("free", [&] { return backend_->Free(device_, reinterpret_cast<void*>(s->address)); });
    }
    if (!st.ok()) {
      std::fprintf(stderr, "CachingAllocator(device %d): releasing segment %#zx failed: %s\n",
                   device_, static_cast<std::size_t>(s->address), std::string(st.message()).c_str());
    }
    for (Block* b = s->head; b != nullptr;) {
      Block* next = b->next;
      DeleteBlock(b);
      b = next;
    }
    DeleteSegment(s);
  }
  for (Event e : spare_events_) DestroyEventQuietly(e);
  for (Block* b : spare_blocks_) DeleteBlock(b);
  RetryRetiredRanges();  // what still fails is reported by the ranges' destructors
}


// --- allocate --------------------------------------------------------------------------

absl::StatusOr<Allocation> CachingAllocator::DoAllocate(std::size_t bytes, Stream stream) {
  const std::optional<std::size_t> rounded = CheckedRoundUp(bytes, options_.min_block_bytes);
  if (rounded && FrontServes(*rounded)) {
    if (const Block* hit = AllocateFromFront(*rounded, bytes, stream)) {
      return Allocation{reinterpret_cast<void*>(hit->address), bytes, stream};
    }
  }
  return AllocateSlow(bytes, stream);
}

absl::StatusOr<Allocation> CachingAllocator::AllocateSlow(std::size_t bytes, Stream stream) {
  const std::optional<std::size_t> rounded = CheckedRoundUp(bytes, options_.min_block_bytes);
  const bool front = rounded && FrontServes(*rounded);
  bool callbacks_ran = false;
  for (;;) {
    ReleasableMutexLock lock(mu_);
    RetireOrphansLocked();
    if (!rounded || *rounded > capacity_ || *rounded > EffectiveLimit()) {
      // Fails fast and touches nothing: no cache flush can make this fit.
      return absl::ResourceExhaustedError(absl::StrFormat(
          "caching allocator (device %d): a request of %d bytes can never be satisfied: the "
          "device has %d bytes and the reserved limit is %d",
          device_, bytes, capacity_, EffectiveLimit()));
    }
    if (!rounded) return absl::ResourceExhaustedError("caching allocator: size overflows");
    // Before the first change: interning a new tag may throw.
    if (recording_) record_tag_ = tags_.Intern(CurrentAllocationTag());
    bool oom = false;
    absl::StatusOr<Allocation> result = TryAllocateLocked(*rounded, bytes, stream, &oom);
    if (result.ok()) {
      // Lent to this thread's cache, so its free (and the next allocation
      // of its size) can take the fast path.
      if (front && !recording_) {
        if (FrontCache* cache = FrontForThisThreadLocked()) LoanLocked(*cache, last_registered_);
      }
      return result;
    }
    if (!oom) return result;
    if (callbacks_ran || oom_callbacks_.empty()) {
      ++stats_.oom_events;
      return OutOfMemoryError(bytes, *rounded, stream);
    }
    // Callbacks may free our own allocations: run them without the lock.
    std::vector<OomCallback> callbacks = oom_callbacks_;
    lock.Unlock();
    callbacks_ran = true;
    for (const OomCallback& callback : callbacks) {
      try {
        callback(OomEvent{device_, *rounded});
      } catch (...) {
        // A throwing callback freed nothing we can count on.
      }
    }
  }
}

absl::StatusOr<Allocation> CachingAllocator::TryAllocateLocked(std::size_t rounded,
                                                               std::size_t requested,
                                                               Stream stream, bool* oom) {
  if (pending_ != nullptr) ProcessPendingEvents();
  if (options_.cross_stream != CrossStreamReuse::kNone) {
    if (auto it = markers_.find(stream.handle); it != markers_.end()) CoverFreesOn(it->second, stream);
  }
  FreeSet& pool = PoolFor(rounded);
  Block* block = FindFree(pool, stream, rounded);
  bool cross_stream = false;
  if (block == nullptr && options_.cross_stream != CrossStreamReuse::kNone) {
    block = HarvestFromOtherStream(pool, stream, rounded);
    cross_stream = block != nullptr;
  }
  if (block == nullptr) {
    // Parked blocks are free memory: they never make us reserve more.
    if (FlushFrontsLocked() > 0) block = FindFree(pool, stream, rounded);
    if (block == nullptr) return NewSegment(pool, stream, rounded, requested, oom);
  }

  // Everything that can fail happens before the first change.
  BlockPtr spare = ShouldSplit(*block, rounded) ? NewBlock() : nullptr;
  ReserveLive();
  Account(IsSmall(pool), [&](MemoryStats& st) {
    ++st.cache_hits;
    if (cross_stream) ++st.cross_stream_reuses;
  });
  if (spare != nullptr && !cross_stream) {
    if (Block* front = SplitFrontInPlace(pool, block, spare, rounded)) {
      return Register(front, requested);
    }
  }
  EraseFree(block);
  return Commit(block, std::move(spare), rounded, requested, stream);
}

Allocation CachingAllocator::Commit(Block* block, BlockPtr spare, std::size_t rounded,
                                    std::size_t requested, Stream stream) {
  // A remainder taken from another stream (after waiting for its marker) is
  // as if freed on `stream` now: others order after `stream`'s next marker.
  std::uint64_t rest_epoch = block->free_epoch;
  if (block->stream.handle != stream.handle && rest_epoch != 0) {
    auto marker = markers_.find(stream.handle);
    rest_epoch = marker != markers_.end() ? ++marker->second.frees
                                          : std::numeric_limits<std::uint64_t>::max();
  }
  block->stream = stream;
  block->state = BlockState::kAllocated;  // before the split: the remainder must not merge into it
  if (spare != nullptr && block->size > rounded) {
    Block* rest = spare.release();
    rest->address = block->address + rounded;
    rest->size = block->size - rounded;
    rest->segment = block->segment;
    rest->stream = stream;
    rest->state = BlockState::kFree;
    rest->free_epoch = rest_epoch;
    rest->prev = block;
    rest->next = block->next;
    if (block->next != nullptr) block->next->prev = rest;
    block->next = rest;
    block->size = rounded;
    // Through the merge path: a block taken from another stream can have a
    // free right neighbour of the new stream, and the two must become one.
    ReturnToPool(rest);
  }
  return Register(block, requested);
}

Allocation CachingAllocator::Register(Block* block, std::size_t requested) {
  block->requested = requested;
  block->sequence = recording_ ? next_sequence_++ : 0;
  block->tag = record_tag_;
  block->segment->last_used = ++tick_;
  block->live_node.key() = block->address;
  block->live_node.mapped() = block;
  allocated_.insert(std::move(block->live_node));  // its own node, room reserved: no-throw
  last_registered_ = block;
  Account(block->segment->small_pool, [&](MemoryStats& st) {
    st.allocated_bytes.Add(static_cast<std::int64_t>(block->size));
    st.requested_bytes.Add(static_cast<std::int64_t>(requested));
    st.active_blocks.Add(1);
  });
  return Allocation{reinterpret_cast<void*>(block->address), requested, block->stream};
}

void CachingAllocator::ReserveLive() { ReserveOneMore(allocated_); }

// --- free ------------------------------------------------------------------------------

absl::Status CachingAllocator::DoDeallocate(const Allocation& allocation, Stream stream) {
  if (front_serving_.load(std::memory_order_relaxed) && FreeIntoFront(allocation, stream)) {
    return absl::OkStatus();
  }
  return DeallocateSlow(allocation, stream);
}

absl::Status CachingAllocator::DeallocateSlow(const Allocation& allocation, Stream stream) {
  ReleasableMutexLock lock(mu_);
  RetireOrphansLocked();
  // Streams this call already waited for on the host (the fallback below).
  std::pmr::vector<Stream> waited_on_host(metadata_);
  for (;;) {
    auto it = allocated_.find(reinterpret_cast<std::uintptr_t>(allocation.ptr));
    if (it == allocated_.end()) {
      ++stats_.failed_frees;
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): %p was not allocated here (a foreign pointer) or was "
          "already freed",
          device_, allocation.ptr));
    }
    Block* block = it->second;
    auto wrong_size = [&] {
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): %p freed as %d bytes but was allocated as %d", device_,
          allocation.ptr, allocation.bytes, block->requested));
    };
    if (block->front != nullptr) {
      // On loan to a thread's cache: freed there already (parked), or freed
      // here, by another thread or in a way the fast path leaves to us.
      FrontCache& front = *block->front;
      SpinLockHolder front_lock(front.mu);
      if (block->parked) {
        ++stats_.failed_frees;
        return absl::InvalidArgumentError(absl::StrFormat(
            "caching allocator (device %d): %p was not allocated here (a foreign pointer) or "
            "was already freed",
            device_, allocation.ptr));
      }
      if (allocation.bytes != block->requested) {
        ++stats_.failed_frees;
        return wrong_size();
      }
      if (&front == caching_detail::ThisThreadsFront(front_id_) &&
          front_serving_.load(std::memory_order_relaxed) &&
          !front_over_limit_.load(std::memory_order_relaxed) &&
          Parkable(*block, allocation, stream) && ParkEvictingOldestLocked(front, block)) {
        return absl::OkStatus();  // the cache was full: its oldest blocks made room
      }
      UnloanLocked(front, block);
    } else if (allocation.bytes != block->requested) {
      ++stats_.failed_frees;
      return wrong_size();
    }
    if (options_.cross_stream != CrossStreamReuse::kNone) PrepareMarker(stream);
    // Every other stream that used the block, its allocation stream included
    // (the free may come on a recorded stream): the free waits for each.
    std::pmr::vector<Stream> waits(metadata_);
    std::pmr::vector<Event> events(metadata_);
    // Whole streams compared, device too: a peer device's default stream has
    // the same handle as ours.
    auto must_wait = [&](Stream s) {
      if (s == stream) return;
      for (Stream w : waits) {
        if (w == s) return;
      }
      for (Stream w : waited_on_host) {
        if (w == s) return;
      }
      waits.push_back(s);
    };
    must_wait(block->stream);
    for (Stream s : block->stream_uses) must_wait(s);
    if (!waits.empty()) {
      events.reserve(waits.size());
      absl::Status recorded = absl::OkStatus();
      for (Stream s : waits) {
        absl::StatusOr<Event> e = AcquireEventOn(s.device);
        if (e.ok()) {
          recorded = CallAtBoundary("event record", [&] { return backend_->RecordEvent(*e, s); });
          if (recorded.ok()) {
            events.push_back(*e);
            continue;
          }
          RecycleEvent(*e);
        } else {
          recorded = e.status();
        }
        break;
      }
      if (!recorded.ok()) {
        // No events: wait on the host instead, so the block is still safe,
        // without the lock (other threads keep allocating meanwhile); then
        // look at the block again, which another thread may have freed or
        // recorded on in the meantime.
        for (Event e : events) RecycleEvent(e);
        waited_on_host.reserve(waited_on_host.size() + waits.size());
        lock.Unlock();
        for (Stream s : waits) {
          absl::Status synced =
              CallAtBoundary("stream synchronize", [&] { return backend_->SynchronizeStream(s); });
          if (!synced.ok()) {
            lock.Lock();
            ++stats_.failed_frees;
            return absl::Status(synced.code(),
                                absl::StrFormat("caching allocator (device %d): cannot order the "
                                                "free of %p after its other streams: %s",
                                                device_, allocation.ptr, synced.message()));
          }
          waited_on_host.push_back(s);  // capacity reserved: cannot throw
        }
        lock.Lock();
        continue;
      }
    }
    CommitFree(it, stream, std::move(events), FreeKind::kOnStream);
    return absl::OkStatus();
  }
}

absl::Status CachingAllocator::DoDeallocateAfterSync(const Allocation& allocation) {
  MutexLock lock(mu_);
  auto it = allocated_.find(reinterpret_cast<std::uintptr_t>(allocation.ptr));
  Block* block = it != allocated_.end() ? it->second : nullptr;
  bool live = block != nullptr;
  if (live && block->front != nullptr) {
    FrontCache& front = *block->front;
    SpinLockHolder front_lock(front.mu);
    // Parked: freed already, into its thread's cache.
    live = !block->parked && allocation.bytes == block->requested;
    if (live) UnloanLocked(front, block);
  } else if (live) {
    live = allocation.bytes == block->requested;
  }
  if (!live) {
    ++stats_.failed_frees;
    return absl::InvalidArgumentError(absl::StrFormat(
        "caching allocator (device %d): %p (%d bytes) is not a live allocation of this size",
        device_, allocation.ptr, allocation.bytes));
  }
  const Stream keep = block->stream;  // the key it is filed under; never called
  CommitFree(it, keep, std::pmr::vector<Event>(metadata_), FreeKind::kAfterDeviceSync);
  return absl::OkStatus();
}

void CachingAllocator::CommitFree(LiveMap::iterator it, Stream stream,
                                  std::pmr::vector<Event> events, FreeKind kind) {
  Block* block = it->second;
  // Commit: nothing below allocates or fails.
  block->live_node = allocated_.extract(it);  // kept for the block's next allocation
  Account(block->segment->small_pool, [&](MemoryStats& st) {
    st.allocated_bytes.Sub(static_cast<std::int64_t>(block->size));
    st.requested_bytes.Sub(static_cast<std::int64_t>(block->requested));
    st.active_blocks.Sub(1);
  });
  block->requested = 0;
  block->stream = stream;
  block->stream_uses.clear();
  if (kind == FreeKind::kAfterDeviceSync) {
    block->free_epoch = 0;  // nothing queued on it anywhere
  } else if (kind == FreeKind::kParkedEarlier) {
    // Its stream may be gone by now: no marker can be recorded on it, so
    // the block stays with it until a device synchronise.
    block->free_epoch = std::numeric_limits<std::uint64_t>::max();
  } else if (options_.cross_stream != CrossStreamReuse::kNone) {
    MarkFreed(block, stream);
  }
  if (!events.empty()) {
    block->pending_events = std::move(events);
    block->state = BlockState::kPendingEvents;
    block->pending_prev = nullptr;
    block->pending_next = pending_;
    if (pending_ != nullptr) pending_->pending_prev = block;
    pending_ = block;
  } else {
    ReturnToPool(block);
  }
  EnforceLimitLocked();
}

absl::Status CachingAllocator::RecordStream(const Allocation& allocation, Stream stream) {
  if (stream.device != device_) {
    // A peer device's stream (a kernel with peer access, a peer copy): the
    // free waits for it like for any other. It must be a device we have.
    absl::StatusOr<int> devices =
        CallAtBoundary("device count", [&] { return backend_->DeviceCount(); });
    if (!devices.ok()) return devices.status();
    if (stream.device < 0 || stream.device >= *devices) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): RecordStream with a stream of device %d, which the "
          "backend does not have",
          device_, stream.device));
    }
  }
  return CallAtBoundary("RecordStream", [&]() -> absl::Status {
    MutexLock lock(mu_);
    auto it = allocated_.find(reinterpret_cast<std::uintptr_t>(allocation.ptr));
    if (it == allocated_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): RecordStream on %p, which is not a live allocation",
          device_, allocation.ptr));
    }
    Block* block = it->second;
    // A loaned block's streams are read by its thread's fast free, under
    // its cache's lock.
    std::optional<SpinLockHolder> front_lock;
    if (block->front != nullptr) front_lock.emplace(block->front->mu);
    if (block->parked) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): RecordStream on %p, which is not a live allocation",
          device_, allocation.ptr));
    }
    if (stream == block->stream) return absl::OkStatus();
    for (Stream s : block->stream_uses) {
      if (s == stream) return absl::OkStatus();
    }
    block->stream_uses.push_back(stream);
    return absl::OkStatus();
  });
}

// --- controls --------------------------------------------------------------------------

absl::Status CachingAllocator::EmptyCache(std::size_t keep_bytes) {
  return CallAtBoundary("EmptyCache", [&]() -> absl::Status {
    MutexLock lock(mu_);
    FlushFrontsLocked();
    GPUALLOC_RETURN_IF_ERROR(WaitForAllPending());
    GPUALLOC_RETURN_IF_ERROR(CoalesceAfterSync());
    DropMarkers();  // synchronised: no free block needs a marker any more
    std::size_t cached = TrimmableTailBytes();
    for (Segment* s : FullyFreeSegmentsLruFirst()) cached += s->size;
    if (cached > keep_bytes) ReleaseFreeSegments(cached - keep_bytes);
    EnforceLimitLocked();  // keep_bytes never keeps memory above the limit
    return absl::OkStatus();
  });
}

absl::Status CachingAllocator::SetReservedLimit(std::size_t bytes) {
  MutexLock lock(mu_);
  limit_ = bytes;
  // Set before the flush, so no thread parks a block after it.
  front_over_limit_.store(OverLimitLocked(), std::memory_order_relaxed);
  FlushFrontsLocked();  // parked blocks may be what is released
  EnforceLimitLocked();
  return absl::OkStatus();
}

std::size_t CachingAllocator::reserved_limit() const {
  MutexLock lock(mu_);
  return EffectiveLimit();
}

bool CachingAllocator::Owns(const void* ptr) const {
  MutexLock lock(mu_);
  auto it = allocated_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == allocated_.end()) return false;
  const Block* block = it->second;
  if (block->front == nullptr) return true;
  SpinLockHolder front_lock(block->front->mu);
  return !block->parked;
}

void CachingAllocator::AddOomCallback(OomCallback callback) {
  MutexLock lock(mu_);
  oom_callbacks_.push_back(std::move(callback));
}

// --- observation -----------------------------------------------------------------------

std::array<MemoryStats, 2> CachingAllocator::pool_stats() const {
  MutexLock lock(mu_);
  return {StatsWithFrontsLocked(0), StatsWithFrontsLocked(1)};
}

MemoryStats CachingAllocator::stats() const {
  MutexLock lock(mu_);
  return StatsWithFrontsLocked(-1);
}

void CachingAllocator::ResetPeakStats() {
  MutexLock lock(mu_);
  FlushFrontsLocked();  // our counters alone are then exact: the peaks restart from them
  for (MemoryStats* st : {&stats_, &pool_stats_[0], &pool_stats_[1]}) {
    for (StatCounter* c : {&st->allocated_bytes, &st->requested_bytes, &st->reserved_bytes,
                           &st->active_blocks, &st->segments, &st->inactive_split_bytes}) {
      c->ResetPeak();
    }
  }
}

MemorySnapshot CachingAllocator::Snapshot() const {
  MemorySnapshot snap;
  snap.device = device_;
  MutexLock lock(mu_);
  // Every thread's cache held for the whole snapshot, and emptied: parked
  // blocks are free memory, shown (merged) in the free index. That is the
  // one change a snapshot makes, which no caller can tell from outside but
  // by the next allocation's speed.
  caching_detail::AllFrontsLocked fronts_held(fronts_);
  for (const std::shared_ptr<FrontCache>& front : fronts_) {
    front->mu.AssertHeld();
    const_cast<CachingAllocator*>(this)->FlushFrontLocked(*front);
  }
  for (const Segment* s = segments_; s != nullptr; s = s->next) {
    SegmentSnapshot seg{s->address, s->size, s->small_pool, s->last_used, {}};
    for (const Block* b = s->head; b != nullptr; b = b->next) {
      seg.blocks.push_back(BlockSnapshot{b->address, b->size, b->requested, b->state, b->stream});
    }
    snap.segments.push_back(std::move(seg));
  }
  std::sort(snap.segments.begin(), snap.segments.end(),
            [](const SegmentSnapshot& a, const SegmentSnapshot& b) { return a.address < b.address; });
  snap.stats = stats_;
  snap.stats.largest_free_block = LargestFreeBlockLocked();
  for (const std::shared_ptr<FrontCache>& front : fronts_) {
    front->mu.AssertHeld();
    AddFrontCounts(*front, snap.stats, -1);
  }
  return snap;
}

// --- AllocationRecorder ----------------------------------------------------------------

void CachingAllocator::StartRecording() {
  MutexLock lock(mu_);
  recording_ = true;
  // Recorded allocations carry a sequence and a tag, which the fast path
  // does not give: the caches stop serving.
  front_serving_.store(false, std::memory_order_relaxed);
  FlushFrontsLocked();
}

std::vector<RecordedAllocation> CachingAllocator::RecordedLive() const {
  std::vector<RecordedAllocation> out;
  {
    MutexLock lock(mu_);
    for (const auto& [address, block] : allocated_) {
      if (block->sequence == 0) continue;  // made before recording started
      out.push_back(RecordedAllocation{
          Allocation{reinterpret_cast<void*>(address), block->requested, block->stream},
          TagInterner::Text(block->tag), block->sequence});
    }
  }
  std::sort(out.begin(), out.end(), [](const RecordedAllocation& a, const RecordedAllocation& b) {
    return a.sequence < b.sequence;
  });
  return out;
}

std::size_t CachingAllocator::recorded_live_count() const {
  MutexLock lock(mu_);
  std::size_t n = 0;
  for (const auto& [address, block] : allocated_) n += block->sequence != 0 ? 1 : 0;
  return n;
}

}  // namespace gpualloc
