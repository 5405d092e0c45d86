#include "allocator/adapters/default_allocation.h"

#include <array>

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
  // that of the runtime which owns the pointer, among the runtimes of that
  // index that exist, the current device's type first. None is created for
  // the look. With one such runtime (the common case) it is the owner or
  // nobody is, and its own free says which, without a second lock.
  const DeviceType current = context.CurrentDevice().type;
  std::array<Runtime*, kDeviceTypeCount> candidates{};
  int count = 0;
  for (int t = -1; t < kDeviceTypeCount; ++t) {
    const DeviceType type = t < 0 ? current : static_cast<DeviceType>(t);
    if (t >= 0 && type == current) continue;
    if (Runtime* r = context.FindRuntime(Device{type, allocation.device()})) candidates[count++] = r;
  }
  if (count == 1) return candidates[0]->resource().Deallocate(allocation);
  for (int i = 0; i < count; ++i) {
    if (candidates[i]->allocator()->Owns(allocation.ptr)) {
      return candidates[i]->resource().Deallocate(allocation);
    }
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "gpualloc::Deallocate: %p is not a live allocation of any device %d of this context "
      "(foreign pointer, double free, or another context's)",
      allocation.ptr, allocation.device()));
}

}  // namespace gpualloc
