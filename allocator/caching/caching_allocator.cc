#include "allocator/caching/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/node_insert.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::BlockPtr;
using caching_detail::FreeSet;
using caching_detail::LiveMap;
using caching_detail::Segment;
using caching_detail::SegmentPtr;

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
      limit_(options.reserved_limit) {}

CachingAllocator::~CachingAllocator() {
  MutexLock lock(mu_);
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

// --- small helpers ---------------------------------------------------------------

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

absl::StatusOr<Event> CachingAllocator::AcquireEvent() {
  if (!spare_events_.empty()) {
    Event e = spare_events_.back();
    spare_events_.pop_back();
    return e;
  }
  return CallAtBoundary("event create", [&] { return backend_->CreateEvent(device_); });
}

void CachingAllocator::DestroyEventQuietly(Event event) noexcept {
  CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(event); }).IgnoreError();
}

void CachingAllocator::RecycleEvent(Event event) {
  try {
    spare_events_.push_back(event);
  } catch (...) {
    DestroyEventQuietly(event);
  }
}

// --- finding a block ------------------------------------------------------------------

Block* CachingAllocator::FindFree(FreeSet& pool, Stream stream, std::size_t rounded) {
  Block probe;
  probe.stream = stream;
  probe.size = rounded;
  auto it = pool.lower_bound(&probe);
  if (it == pool.end() || (*it)->stream.handle != stream.handle) return nullptr;
  return FitsSplitRules(**it, rounded) ? *it : nullptr;
}

Block* CachingAllocator::HarvestFromOtherStream(FreeSet& pool, Stream stream,
                                                std::size_t rounded) {
  // The best fit among other streams' takeable free blocks: one lower_bound
  // per stream, then a few steps past blocks the marker does not cover yet.
  constexpr int kProbes = 4;
  Block* best = nullptr;
  const FreeMarker* best_marker = nullptr;
  Block probe;
  for (auto it = pool.begin(); it != pool.end();) {
    const std::uintptr_t owner = (*it)->stream.handle;
    if (owner != stream.handle) {
      probe.stream = (*it)->stream;
      probe.size = rounded;
      probe.address = 0;
      auto fit = pool.lower_bound(&probe);
      // The owner's marker, if it has one that was recorded (once per stream).
      auto found = markers_.find(owner);
      const FreeMarker* marker =
          found != markers_.end() && found->second.event ? &found->second : nullptr;
      for (int tries = 0; fit != pool.end() && (*fit)->stream.handle == owner && tries < kProbes;
           ++fit, ++tries) {
        const Block& b = **fit;
        // Takeable: nothing queued on it anywhere, or freed before the
        // owner's last marker.
        const bool fresh = b.free_epoch == 0;
        if (!FitsSplitRules(b, rounded) ||
            !(fresh || (marker != nullptr && b.free_epoch <= marker->covered))) {
          continue;
        }
        if (best == nullptr || b.size < best->size) {
          best = *fit;
          best_marker = fresh ? nullptr : marker;
        }
        break;
      }
    }
    probe.stream = (*it)->stream;
    probe.size = std::numeric_limits<std::size_t>::max();
    probe.address = std::numeric_limits<std::uintptr_t>::max();
    it = pool.upper_bound(&probe);
  }
  if (best == nullptr) return nullptr;
  if (best_marker == nullptr) return best;
  // Order the reuse after the owner's work through its marker, recorded after
  // the free: the owner stream itself is never named again.
  const Event marker = *best_marker->event;
  if (options_.cross_stream == CrossStreamReuse::kFollowEvents) {
    const bool waited = CallAtBoundary("stream wait", [&] {
                          return backend_->StreamWaitEvent(stream, marker);
                        }).ok();
    return waited ? best : nullptr;
  }
  absl::StatusOr<bool> done =
      CallAtBoundary("event query", [&] { return backend_->QueryEvent(marker); });
  return done.ok() && *done ? best : nullptr;
}

void CachingAllocator::PrepareMarker(Stream stream) {
  FreeMarker& marker = markers_[stream.handle];  // may throw: nothing changed yet
  if (marker.event) return;
  absl::StatusOr<Event> event = AcquireEvent();
  // Without an event the stream's frees simply stay with it.
  if (event.ok()) marker.event = *event;
}

void CachingAllocator::MarkFreed(Block* block, Stream stream) {
  auto it = markers_.find(stream.handle);
  if (it == markers_.end()) {
    block->free_epoch = std::numeric_limits<std::uint64_t>::max();  // until a device sync
    return;
  }
  block->free_epoch = ++it->second.frees;
  CoverFreesOn(it->second, stream);
}

void CachingAllocator::CoverFreesOn(FreeMarker& marker, Stream stream) {
  const std::uint64_t uncovered = marker.frees - marker.covered;
  if (!marker.event || uncovered == 0) return;
  // By count alone, so a deterministic schedule replays the same decisions.
  if (marker.covered != 0 && uncovered < kFreesPerMarker) return;
  if (CallAtBoundary("event record", [&] { return backend_->RecordEvent(*marker.event, stream); })
          .ok()) {
    marker.covered = marker.frees;
  }
}

void CachingAllocator::DropMarkers() {
  for (auto& entry : markers_) {
    if (!entry.second.event) continue;
    const Event event = *entry.second.event;
    if (!CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(event); }).ok()) {
      RecycleEvent(event);  // kept, and destroyed with the allocator
    }
  }
  markers_.clear();
}

void CachingAllocator::ForgetQueuedWork() {
  for (FreeSet* pool : {&small_, &large_}) {
    for (Block* b : *pool) b->free_epoch = 0;  // not part of the key
  }
}

// --- allocate -----------------------------------------------------------------------

absl::StatusOr<Allocation> CachingAllocator::DoAllocate(std::size_t bytes, Stream stream) {
  const std::optional<std::size_t> rounded = CheckedRoundUp(bytes, options_.min_block_bytes);
  bool callbacks_ran = false;
  for (;;) {
    ReleasableMutexLock lock(mu_);
    if (!rounded || *rounded > capacity_ || *rounded > EffectiveLimit()) {
      // Fails fast and touches nothing: no cache flush can make this fit.
      return absl::ResourceExhaustedError(absl::StrFormat(
          "caching allocator (device %d): a request of %d bytes can never be satisfied: the "
          "device has %d bytes and the reserved limit is %d",
          device_, bytes, capacity_, EffectiveLimit()));
    }
    if (!rounded) return absl::ResourceExhaustedError("caching allocator: size overflows");
    bool oom = false;
    absl::StatusOr<Allocation> result = TryAllocateLocked(*rounded, bytes, stream, &oom);
    if (result.ok() || !oom) return result;
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
  if (block == nullptr) return NewSegment(pool, stream, rounded, requested, oom);

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

  const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
  if (options_.gc_threshold > 0) {
    const auto threshold = static_cast<std::size_t>(options_.gc_threshold * EffectiveLimit());
    if (reserved + size > threshold && ReleaseFreeSegments(reserved + size - threshold) > 0) {
      ++stats_.cache_flushes;
    }
  }
  auto malloc_once = [&](std::size_t bytes)
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::StatusOr<void*> {
    const auto held = static_cast<std::size_t>(stats_.reserved_bytes.current);
    if (held + bytes > EffectiveLimit() &&
        ReleaseFreeSegments(held + bytes - EffectiveLimit()) > 0) {
      ++stats_.cache_flushes;
    }
    if (static_cast<std::size_t>(stats_.reserved_bytes.current) + bytes > EffectiveLimit()) {
      return absl::ResourceExhaustedError("reserved limit reached");
    }
    return CallAtBoundary("malloc", [&] { return backend_->Malloc(device_, bytes); });
  };
  absl::StatusOr<void*> ptr = malloc_once(size);
  if (ptr.status().code() == absl::StatusCode::kResourceExhausted) {
    // Out of memory: give cached segments back (LRU first), then everything
    // cached (after merging blocks split across idle streams), then try a
    // segment of exactly the request.
    if (ReleaseFreeSegments(size) > 0) {
      ++stats_.cache_flushes;
      ptr = malloc_once(size);
    }
    if (ptr.status().code() == absl::StatusCode::kResourceExhausted &&
        WaitForAllPending().ok() && CoalesceAfterSync().ok() &&
        ReleaseFreeSegments(std::numeric_limits<std::size_t>::max()) > 0) {
      ++stats_.cache_flushes;
      ptr = malloc_once(size);
    }
    if (ptr.status().code() == absl::StatusCode::kResourceExhausted && size > rounded) {
      size = rounded;
      block->size = size;
      if (spare && !ShouldSplit(*block, rounded)) spare.reset();
      ptr = malloc_once(size);
    }
  }
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
  block->segment->last_used = ++tick_;
  block->live_node.key() = block->address;
  block->live_node.mapped() = block;
  allocated_.insert(std::move(block->live_node));  // its own node, room reserved: no-throw
  Account(block->segment->small_pool, [&](MemoryStats& st) {
    st.allocated_bytes.Add(static_cast<std::int64_t>(block->size));
    st.requested_bytes.Add(static_cast<std::int64_t>(requested));
    st.active_blocks.Add(1);
  });
  return Allocation{reinterpret_cast<void*>(block->address), requested, block->stream};
}

void CachingAllocator::ReserveLive() { ReserveOneMore(allocated_); }

// --- free -------------------------------------------------------------------------------

absl::Status CachingAllocator::DoDeallocate(const Allocation& allocation, Stream stream) {
  ReleasableMutexLock lock(mu_);
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
    if (allocation.bytes != block->requested) {
      ++stats_.failed_frees;
      return absl::InvalidArgumentError(absl::StrFormat(
          "caching allocator (device %d): %p freed as %d bytes but was allocated as %d", device_,
          allocation.ptr, allocation.bytes, block->requested));
    }
    if (options_.cross_stream != CrossStreamReuse::kNone) PrepareMarker(stream);
    // Every other stream that used the block, its allocation stream included
    // (the free may come on a recorded stream): the free waits for each.
    std::pmr::vector<Stream> waits(metadata_);
    std::pmr::vector<Event> events(metadata_);
    auto must_wait = [&](Stream s) {
      if (s.handle == stream.handle) return;
      for (Stream w : waits) {
        if (w.handle == s.handle) return;
      }
      for (Stream w : waited_on_host) {
        if (w.handle == s.handle) return;
      }
      waits.push_back(s);
    };
    must_wait(block->stream);
    for (Stream s : block->stream_uses) must_wait(s);
    if (!waits.empty()) {
      events.reserve(waits.size());
      absl::Status recorded = absl::OkStatus();
      for (Stream s : waits) {
        absl::StatusOr<Event> e = AcquireEvent();
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
    CommitFree(it, stream, std::move(events), /*synchronised=*/false);
    return absl::OkStatus();
  }
}

absl::Status CachingAllocator::DoDeallocateAfterSync(const Allocation& allocation) {
  MutexLock lock(mu_);
  auto it = allocated_.find(reinterpret_cast<std::uintptr_t>(allocation.ptr));
  if (it == allocated_.end() || allocation.bytes != it->second->requested) {
    ++stats_.failed_frees;
    return absl::InvalidArgumentError(absl::StrFormat(
        "caching allocator (device %d): %p (%d bytes) is not a live allocation of this size",
        device_, allocation.ptr, allocation.bytes));
  }
  Block* block = it->second;
  const Stream keep = block->stream;  // the key it is filed under; never called
  CommitFree(it, keep, std::pmr::vector<Event>(metadata_), /*synchronised=*/true);
  return absl::OkStatus();
}

void CachingAllocator::CommitFree(LiveMap::iterator it, Stream stream,
                                  std::pmr::vector<Event> events, bool synchronised) {
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
  if (synchronised) {
    block->free_epoch = 0;  // nothing queued on it anywhere
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

void CachingAllocator::EnforceLimitLocked() {
  // Over the limit (it was lowered below what live blocks held): cached
  // memory above it goes back as soon as it is free.
  const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
  if (reserved > EffectiveLimit()) ReleaseFreeSegments(reserved - EffectiveLimit());
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

absl::Status CachingAllocator::RecordStream(const Allocation& allocation, Stream stream) {
  if (stream.device != device_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "caching allocator (device %d): RecordStream with a stream of device %d", device_,
        stream.device));
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
    if (stream.handle == block->stream.handle) return absl::OkStatus();
    for (Stream s : block->stream_uses) {
      if (s.handle == stream.handle) return absl::OkStatus();
    }
    block->stream_uses.push_back(stream);
    return absl::OkStatus();
  });
}

// --- events and release -------------------------------------------------------------

void CachingAllocator::ProcessPendingEvents() {
  // Every pending block is checked: one slow stream does not hold back the
  // blocks waiting on others (no head-of-line blocking).
  for (Block* b = pending_; b != nullptr;) {
    Block* next = b->pending_next;
    bool done = true;
    for (Event e : b->pending_events) {
      absl::StatusOr<bool> q =
          CallAtBoundary("event query", [&] { return backend_->QueryEvent(e); });
      if (!q.ok() || !*q) {
        done = false;
        break;
      }
    }
    if (done) {
      if (b->pending_prev != nullptr) b->pending_prev->pending_next = b->pending_next;
      if (b->pending_next != nullptr) b->pending_next->pending_prev = b->pending_prev;
      if (pending_ == b) pending_ = b->pending_next;
      b->pending_prev = b->pending_next = nullptr;
      for (Event e : b->pending_events) RecycleEvent(e);
      b->pending_events.clear();
      ReturnToPool(b);
    }
    b = next;
  }
  EnforceLimitLocked();
}

absl::Status CachingAllocator::WaitForAllPending() {
  for (Block* b = pending_; b != nullptr; b = b->pending_next) {
    for (Event e : b->pending_events) {
      GPUALLOC_RETURN_IF_ERROR(
          CallAtBoundary("event synchronize", [&] { return backend_->SynchronizeEvent(e); }));
    }
  }
  ProcessPendingEvents();
  return absl::OkStatus();
}

absl::Status CachingAllocator::CoalesceAfterSync() {
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary(
      "device synchronize", [&] { return backend_->DeviceSynchronize(device_); }));
  // Every stream is idle now, so free neighbours merge whatever their stream.
  for (Segment* s = segments_; s != nullptr; s = s->next) {
    for (Block* b = s->head; b != nullptr && b->next != nullptr;) {
      Block* n = b->next;
      if (b->state == BlockState::kFree && n->state == BlockState::kFree) {
        EraseFree(b);
        EraseFree(n);
        b->size += n->size;
        b->next = n->next;
        if (n->next != nullptr) n->next->prev = b;
        DeleteBlock(n);
        InsertFree(b);
      } else {
        b = n;
      }
    }
  }
  ForgetQueuedWork();
  return absl::OkStatus();
}

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

absl::Status CachingAllocator::EmptyCache(std::size_t keep_bytes) {
  return CallAtBoundary("EmptyCache", [&]() -> absl::Status {
    MutexLock lock(mu_);
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
  EnforceLimitLocked();
  return absl::OkStatus();
}

bool CachingAllocator::Owns(const void* ptr) const {
  MutexLock lock(mu_);
  return allocated_.contains(reinterpret_cast<std::uintptr_t>(ptr));
}

std::size_t CachingAllocator::reserved_limit() const {
  MutexLock lock(mu_);
  return EffectiveLimit();
}

void CachingAllocator::AddOomCallback(OomCallback callback) {
  MutexLock lock(mu_);
  oom_callbacks_.push_back(std::move(callback));
}

// --- observation ------------------------------------------------------------------------

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

std::array<MemoryStats, 2> CachingAllocator::pool_stats() const {
  MutexLock lock(mu_);
  return pool_stats_;
}

MemoryStats CachingAllocator::stats() const {
  MutexLock lock(mu_);
  MemoryStats s = stats_;
  s.largest_free_block = LargestFreeBlockLocked();
  return s;
}

void CachingAllocator::ResetPeakStats() {
  MutexLock lock(mu_);
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
  return snap;
}

absl::Status CachingAllocator::OutOfMemoryError(std::size_t requested, std::size_t rounded,
                                                Stream stream) const {
  std::size_t too_small = 0, other_streams = 0, pending = 0;
  for (const FreeSet* pool : {&small_, &large_}) {
    for (const Block* b : *pool) {
      if (b->size < rounded) {
        too_small += b->size;
      } else if (b->stream.handle != stream.handle) {
        other_streams += b->size;
      }
    }
  }
  for (const Block* b = pending_; b != nullptr; b = b->pending_next) pending += b->size;
  const auto allocated = static_cast<std::size_t>(stats_.allocated_bytes.current);
  const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
  std::string device_view = "the device's own free memory is unknown";
  absl::StatusOr<MemoryInfo> info =
      CallAtBoundary("memory info", [&] { return backend_->GetMemoryInfo(device_); });
  if (info.ok()) {
    device_view = absl::StrFormat("the device reports %d bytes free of %d", info->free_bytes,
                                  info->total_bytes);
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "out of memory on device %d: tried to allocate %d bytes (rounded to %d) on stream %d; "
      "this allocator has %d bytes allocated and %d reserved (limit %d). Of the %d reserved "
      "but unallocated bytes: %d are cached free blocks (%d of them in blocks too small for "
      "this request, %d in blocks of other streams not yet safe to reuse) and %d wait on other "
      "streams' events; the largest contiguous free block is %d bytes; %s.",
      device_, requested, rounded, stream.handle, allocated, reserved, EffectiveLimit(),
      reserved - allocated, stats_.free_bytes, too_small, other_streams, pending,
      LargestFreeBlockLocked(), device_view));
}

}  // namespace gpualloc
