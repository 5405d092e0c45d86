// A picture of a caching allocator's memory: every segment it holds and every
// block inside, with its state. Used by the invariant checker (stats are
// recomputed from it), the stress report's segment map and leak reports.
#ifndef GPUALLOC_ALLOCATOR_STATS_MEMORY_SNAPSHOT_H_
#define GPUALLOC_ALLOCATOR_STATS_MEMORY_SNAPSHOT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "allocator/backend/types.h"
#include "allocator/stats/memory_stats.h"

namespace gpualloc {

enum class BlockState { kFree, kAllocated, kPendingEvents };

struct BlockSnapshot {
  std::uintptr_t address = 0;
  std::size_t size = 0;
  std::size_t requested = 0;  // 0 unless allocated
  BlockState state = BlockState::kFree;
  Stream stream;
};

struct SegmentSnapshot {
  std::uintptr_t address = 0;
  std::size_t size = 0;
  bool small_pool = false;
  std::uint64_t last_used = 0;  // allocator tick of the last allocation from it
  std::vector<BlockSnapshot> blocks;  // in address order, covering the segment
};

struct MemorySnapshot {
  DeviceIndex device = 0;
  std::vector<SegmentSnapshot> segments;  // in address order
  // The allocator's counters at the same instant (taken under the same lock).
  MemoryStats stats;

  // {"device":0,"segments":[{"address":..,"size":..,"small_pool":..,"blocks":[..]}]}
  std::string ToJson() const;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_STATS_MEMORY_SNAPSHOT_H_
