// CachingAllocator's stream ordering: pooled events, the free markers that
// let another stream take a freed block, the cross-stream harvest, and the
// blocks pending on other streams' events.
#include "allocator/caching/caching_allocator.h"

#include <limits>

#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::FreeSet;
using caching_detail::Segment;

// --- events ----------------------------------------------------------------------------

absl::StatusOr<Event> CachingAllocator::AcquireEvent() {
  if (!spare_events_.empty()) {
    Event e = spare_events_.back();
    spare_events_.pop_back();
    return e;
  }
  return CallAtBoundary("event create", [&] { return backend_->CreateEvent(device_); });
}

absl::StatusOr<Event> CachingAllocator::AcquireEventOn(DeviceIndex device) {
  if (device == device_) return AcquireEvent();
  // A peer's stream (RecordStream): its events must be of its device.
  return CallAtBoundary("event create", [&] { return backend_->CreateEvent(device); });
}

void CachingAllocator::DestroyEventQuietly(Event event) noexcept {
  CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(event); }).IgnoreError();
}

void CachingAllocator::RecycleEvent(Event event) {
  if (event.device != device_) {  // a peer's: the spares are of our device
    DestroyEventQuietly(event);
    return;
  }
  try {
    spare_events_.push_back(event);
  } catch (...) {
    DestroyEventQuietly(event);
  }
}

// --- free markers and the cross-stream harvest -----------------------------------------

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

// --- pending events --------------------------------------------------------------------

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

}  // namespace gpualloc
