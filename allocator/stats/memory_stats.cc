#include "allocator/stats/memory_stats.h"

#include "absl/strings/str_format.h"

namespace gpualloc {

std::string MemoryStats::ToString() const {
  return absl::StrFormat(
      "allocated %d B (peak %d), reserved %d B (peak %d), %d active blocks, %d segments, "
      "inactive split %d B\nupstream allocs %d frees %d, cache hits %d misses %d (hit rate "
      "%.3f), OOM events %d, failed frees %d, cross-stream reuses %d, cache flushes %d\n"
      "free %d B, largest free block %d B, reserved/allocated %.3f\n",
      allocated_bytes.current, allocated_bytes.peak, reserved_bytes.current, reserved_bytes.peak,
      active_blocks.current, segments.current, inactive_split_bytes.current, upstream_allocs,
      upstream_frees, cache_hits, cache_misses, HitRate(), oom_events, failed_frees,
      cross_stream_reuses, cache_flushes, free_bytes, largest_free_block, ReservedOverAllocated());
}

}  // namespace gpualloc
