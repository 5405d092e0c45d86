// Replays an allocation trace against any MemoryResource, in order, and
// reports what the allocator made of it: peak reserved against peak
// allocated (fragmentation), upstream calls, failures and time. Two
// allocators compared on the same trace are compared on the same workload.
#ifndef GPUALLOC_HARNESS_TRACE_REPLAY_H_
#define GPUALLOC_HARNESS_TRACE_REPLAY_H_

#include <string>
#include <vector>

#include "allocator/observe/trace_format.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc::harness {

struct ReplayReport {
  std::uint64_t events = 0;
  std::uint64_t allocations = 0;
  std::uint64_t failed_allocations = 0;  // refused (e.g. out of memory); their frees are skipped
  double seconds = 0;
  std::int64_t peak_requested = 0;  // what the trace itself needed at its peak
  std::int64_t peak_reserved = 0;   // what the allocator held from upstream at its peak
  std::uint64_t upstream_allocs = 0;
  std::uint64_t upstream_frees = 0;

  double Fragmentation() const {
    return peak_requested ? static_cast<double>(peak_reserved) / peak_requested : 0;
  }
  std::string ToString() const;
};

// The trace must be valid (ValidateTrace); every event runs on `resource`'s
// device, on the default stream. Frees left open by the trace are done at
// the end so the resource is left as found.
absl::StatusOr<ReplayReport> Replay(const std::vector<TraceEvent>& events, MemoryResource& resource);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TRACE_REPLAY_H_
