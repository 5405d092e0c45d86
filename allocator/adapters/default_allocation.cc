#include "allocator/adapters/default_allocation.h"

#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::StatusOr<Allocation> Allocate(std::size_t bytes, Context& context) {
  const Device device = context.CurrentDevice();
  return Allocate(bytes, Stream::Default(device.index), context);
}

absl::StatusOr<Allocation> Allocate(std::size_t bytes, Stream stream, Context& context) {
  const Device device = context.CurrentDevice();
  GPUALLOC_ASSIGN_OR_RETURN(Runtime * runtime, context.GetRuntime(device));
  return runtime->resource().Allocate(bytes, stream);
}

absl::Status Deallocate(const Allocation& allocation, Context& context) {
  // The device type is the current one's (one context serves one kind of
  // runtime per process in practice); the index is the allocation's own.
  const Device owner{context.CurrentDevice().type, allocation.device()};
  GPUALLOC_ASSIGN_OR_RETURN(Runtime * runtime, context.GetRuntime(owner));
  return runtime->resource().Deallocate(allocation);
}

}  // namespace gpualloc
