// AllocationRecorder: an optional capability of a MemoryResource that
// remembers, for each live allocation, its order and the allocation tag
// (ScopedAllocationTag) of the thread that made it, under the lock the
// resource already holds for the allocation. TrackingAdaptor uses it, when
// its upstream offers one, instead of a table and a lock of its own: leak
// tracking then costs a few stores per allocation.
//
//   if (AllocationRecorder* r = resource->recorder()) {
//     r->StartRecording();
//     ...
//     for (const RecordedAllocation& a : r->RecordedLive()) ...
//   }
//
// A recorder records every allocation made on its resource once recording
// has started, whoever makes it (through an adaptor or directly), and never
// stops. Thread-safe.
#ifndef GPUALLOC_ALLOCATOR_RESOURCE_ALLOCATION_RECORDER_H_
#define GPUALLOC_ALLOCATOR_RESOURCE_ALLOCATION_RECORDER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "allocator/resource/memory_resource.h"

namespace gpualloc {

struct RecordedAllocation {
  Allocation allocation;
  std::string tag;             // "" when none was set
  std::uint64_t sequence = 0;  // order of allocation, from 1
};

class AllocationRecorder {
 public:
  // Records each allocation made from now on. Idempotent.
  virtual void StartRecording() = 0;
  // The recorded allocations still live, oldest first. Allocations made
  // before recording started are not listed.
  virtual std::vector<RecordedAllocation> RecordedLive() const = 0;
  virtual std::size_t recorded_live_count() const = 0;

 protected:
  ~AllocationRecorder() = default;  // owned by its resource, never deleted through this
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_RESOURCE_ALLOCATION_RECORDER_H_
