// The process-wide convenience API: allocate on the calling thread's current
// device of the default context, free wherever the memory came from.
//
//   gpualloc::ScopedDevice on(gpualloc::DefaultContext(), {DeviceType::kCuda, 1});
//   absl::StatusOr<gpualloc::Allocation> a = gpualloc::Allocate(1 << 20);
//   ...
//   gpualloc::Deallocate(*a);   // returns to device 1's allocator, whatever is current now
//
// Thread-safe. A thin layer over DefaultContext() and each runtime's caching
// allocator; components that can take their allocator as an argument should.
#ifndef GPUALLOC_ALLOCATOR_ADAPTERS_DEFAULT_ALLOCATION_H_
#define GPUALLOC_ALLOCATOR_ADAPTERS_DEFAULT_ALLOCATION_H_

#include "allocator/context/context.h"

namespace gpualloc {

// `bytes` on the calling thread's current device of `context`, usable on
// that device's default stream (or `stream`, which must be on that device).
absl::StatusOr<Allocation> Allocate(std::size_t bytes, Context& context = DefaultContext());
absl::StatusOr<Allocation> Allocate(std::size_t bytes, Stream stream,
                                    Context& context = DefaultContext());
// Frees on the allocation's own device (not the current one), so freeing
// memory of device A while device B is current is correct, whatever the two
// devices' types. InvalidArgument for a pointer no runtime of the allocation's
// device index owns.
absl::Status Deallocate(const Allocation& allocation, Context& context = DefaultContext());

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_ADAPTERS_DEFAULT_ALLOCATION_H_
