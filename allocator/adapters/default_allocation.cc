#include "allocator/adapters/default_allocation.h"

#include "absl/strings/str_format.h"
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
  // The allocation's own device: its index is in the allocation; its type is
  // that of the runtime which owns the pointer, looked for among the runtimes
  // of that index that exist, the current device's type first (the common
  // case). None is created for the look.
  const DeviceType current = context.CurrentDevice().type;
  for (int t = -1; t < kDeviceTypeCount; ++t) {
    const DeviceType type = t < 0 ? current : static_cast<DeviceType>(t);
    if (t >= 0 && type == current) continue;
    Runtime* runtime = context.FindRuntime(Device{type, allocation.device()});
    if (runtime != nullptr && runtime->allocator()->Owns(allocation.ptr)) {
      return runtime->resource().Deallocate(allocation);
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "gpualloc::Deallocate: %p is not a live allocation of any device %d of this context "
      "(foreign pointer, double free, or another context's)",
      allocation.ptr, allocation.device()));
}

}  // namespace gpualloc
