// Statistics every memory resource reports: what is handed out (allocated),
// what is held from upstream (reserved), and how the cache performed.
//
// A MemoryStats is a plain snapshot: resources fill it under their own lock,
// so reading one is as thread-safe and as cheap as the resource's stats().
#ifndef GPUALLOC_ALLOCATOR_STATS_MEMORY_STATS_H_
#define GPUALLOC_ALLOCATOR_STATS_MEMORY_STATS_H_

#include <algorithm>
#include <cstdint>
#include <string>

namespace gpualloc {

// current / peak / cumulative total of one quantity.
struct StatCounter {
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t total = 0;  // sum of every increase ever made

  void Add(std::int64_t n) {
    current += n;
    total += n;
    peak = std::max(peak, current);
  }
  void Sub(std::int64_t n) { current -= n; }
  void ResetPeak() { peak = current; }
};

struct MemoryStats {
  StatCounter allocated_bytes;       // bytes in live allocations (block sizes)
  StatCounter requested_bytes;       // bytes the callers asked for
  StatCounter reserved_bytes;        // bytes held from the upstream resource
  StatCounter active_blocks;         // live allocations
  StatCounter segments;              // upstream allocations held
  StatCounter inactive_split_bytes;  // free bytes in partly used segments
  std::uint64_t upstream_allocs = 0;
  std::uint64_t upstream_frees = 0;
  std::uint64_t cache_hits = 0;      // served from cached blocks
  std::uint64_t cache_misses = 0;    // needed a new upstream allocation
  std::uint64_t oom_events = 0;      // allocations that failed for lack of memory
  std::uint64_t failed_frees = 0;    // deallocations rejected or failed upstream
  std::uint64_t cross_stream_reuses = 0;
  std::uint64_t cache_flushes = 0;   // segments released to relieve pressure
  // Filled by resources that keep a free list.
  std::uint64_t free_bytes = 0;
  std::uint64_t largest_free_block = 0;

  // reserved / allocated (1.0 = no overhead); 0 when nothing is allocated.
  double ReservedOverAllocated() const {
    return allocated_bytes.current > 0
               ? static_cast<double>(reserved_bytes.current) / allocated_bytes.current
               : 0.0;
  }
  // largest free block / total free bytes: 1.0 = one hole, near 0 = slivers.
  double LargestFreeOverFree() const {
    return free_bytes > 0 ? static_cast<double>(largest_free_block) / free_bytes : 1.0;
  }
  double HitRate() const {
    const std::uint64_t n = cache_hits + cache_misses;
    return n ? static_cast<double>(cache_hits) / n : 0.0;
  }
  // Multi-line, human-readable.
  std::string ToString() const;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_STATS_MEMORY_STATS_H_
