// The knobs of CachingAllocator, with the rounding rules they define.
//
// Rounding (defaults follow PyTorch's CUDACachingAllocator, which users know):
//  - a request is rounded up to a multiple of min_block_bytes (512);
//  - rounded requests up to small_request_max (1 MiB) come from the small
//    pool, whose segments are small_segment_bytes (2 MiB);
//  - larger requests come from the large pool: below
//    large_request_own_segment_min (10 MiB) they get a large_segment_bytes
//    (20 MiB) segment to share, otherwise a segment of their own rounded up
//    to large_segment_round (2 MiB).
// Splitting: a free block is split when the remainder is at least
// min_block_bytes (small pool) or more than small_request_max (large pool);
// blocks of max_split_bytes or more are never split, and a request below
// max_split_bytes never takes one (so huge cached blocks are not carved into
// slivers).
#ifndef GPUALLOC_ALLOCATOR_CACHING_CACHING_OPTIONS_H_
#define GPUALLOC_ALLOCATOR_CACHING_CACHING_OPTIONS_H_

#include <cstddef>
#include <limits>
#include <memory_resource>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gpualloc {

// When may a block freed on stream S be reused on stream T != S? Mirrors
// cudaMemPool's reuse policies.
enum class CrossStreamReuse {
  // Never: it stays with S until the cache is emptied (PyTorch's behaviour).
  kNone,
  // When an event recorded on S after the free has completed.
  kOpportunistic,
  // At once, with T made to wait (on the device, not the host) for an event
  // recorded on S after the free.
  kFollowEvents,
};

// "none", "opportunistic", "follow": the names the tools' flags and reports use.
absl::string_view CrossStreamReuseName(CrossStreamReuse reuse);
// False (and *reuse untouched) for any other name.
bool ParseCrossStreamReuse(absl::string_view name, CrossStreamReuse* reuse);

struct CachingOptions {
  std::size_t min_block_bytes = 512;
  std::size_t small_request_max = std::size_t{1} << 20;
  std::size_t small_segment_bytes = std::size_t{2} << 20;
  std::size_t large_request_own_segment_min = std::size_t{10} << 20;
  std::size_t large_segment_bytes = std::size_t{20} << 20;
  std::size_t large_segment_round = std::size_t{2} << 20;
  std::size_t max_split_bytes = std::numeric_limits<std::size_t>::max();
  // Reserved bytes may not exceed this (0: the device's capacity). Reaching
  // it is out-of-memory, handled like the device's own.
  std::size_t reserved_limit = 0;
  // In (0, 1]: before reserving more, release least recently used free
  // segments while reserved would pass this fraction of the limit. 0: off.
  double gc_threshold = 0;
  CrossStreamReuse cross_stream = CrossStreamReuse::kFollowEvents;
  // Grow one segment per pool in place (virtual memory: reserve the device's
  // capacity of address space, map physical chunks at its end as needed,
  // unmap free tails when memory is wanted back) instead of obtaining many
  // separate segments. Needs a backend with virtual memory (CUDA VMM, sim).
  bool expandable_segments = false;
  // Where the allocator keeps its host bookkeeping: blocks, segments, their
  // set and map nodes, its lists. Null: new/delete. It must outlive the
  // allocator, and be thread-safe if anything else uses it at the same time
  // (the allocator calls it only under its own lock). If it throws
  // std::bad_alloc, the operation that needed it fails with ResourceExhausted
  // and changes nothing (see CachingAllocator's strong guarantee): an arena
  // or a pool for the bookkeeping, or a resource that fails on chosen calls
  // to test exactly that.
  std::pmr::memory_resource* metadata_resource = nullptr;
  // Per-thread front cache (0: off). Each thread keeps up to this many of
  // the blocks it freed, unmerged, for its next allocations of the same
  // rounded size on the same stream, which then take neither the
  // allocator's lock nor its free index (see docs/design.md, "Front
  // cache"). Parked blocks never make the allocator reserve more memory,
  // and a thread whose sizes do not repeat soon stops parking for a while.
  // At most kMaxFrontCacheBlocks.
  std::size_t front_cache_blocks = 0;
  // The bound on the bytes one thread's front cache keeps; larger requests
  // never use it.
  std::size_t front_cache_bytes = std::size_t{16} << 20;
  static constexpr std::size_t kMaxFrontCacheBlocks = 64;

  // OK, or InvalidArgument naming the first inconsistent field.
  absl::Status Validate() const;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CACHING_CACHING_OPTIONS_H_
