// CachingAllocator out of memory: the ladder a new segment climbs when the
// device or the reserved limit refuses (cached segments back, least recently
// used first; then everything cached, after a device synchronise merges
// blocks split across idle streams; then a segment of exactly the request),
// and the error that says where the memory is when nothing helped. (The OOM
// callbacks, the last rung, run in DoAllocate, outside the lock.)
#include "allocator/caching/caching_allocator.h"

#include <limits>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

using caching_detail::Block;
using caching_detail::FreeSet;

// --- the ladder ------------------------------------------------------------------------

absl::StatusOr<void*> CachingAllocator::SegmentMemory(std::size_t& size, std::size_t rounded,
                                                      Block& block, BlockPtr& spare) {
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
      block.size = size;
      spare.reset();  // a block of exactly `rounded` is never split
      ptr = malloc_once(size);
    }
  }
  return ptr;
}

// --- the error -------------------------------------------------------------------------

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
