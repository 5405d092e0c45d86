#include "allocator/resource/memory_resource.h"

#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

absl::StatusOr<Allocation> MemoryResource::Allocate(std::size_t bytes, Stream stream) noexcept {
  if (ABSL_PREDICT_FALSE(bytes == 0 || stream.device != device())) {
    return RefuseAllocate(bytes, stream);
  }
  return CallAtBoundaryNamed([&] { return absl::StrFormat("%s: allocate %d bytes", name(), bytes); },
                             [&] { return DoAllocate(bytes, stream); });
}

absl::Status MemoryResource::RefuseAllocate(std::size_t bytes, Stream stream) const {
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: zero-byte allocation requested", name()));
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: allocation on a stream of device %d, but this resource serves device %d", name(),
      stream.device, device()));
}

absl::Status MemoryResource::Deallocate(const Allocation& allocation, Stream stream) noexcept {
  const DeviceIndex ours = device();
  if (ABSL_PREDICT_FALSE(allocation.ptr == nullptr || allocation.device() != ours ||
                         stream.device != ours)) {
    return RefuseDeallocate(allocation, stream);
  }
  return CallAtBoundaryNamed(
      [&] { return absl::StrFormat("%s: deallocate %p", name(), allocation.ptr); },
      [&] { return DoDeallocate(allocation, stream); });
}

absl::Status MemoryResource::RefuseDeallocate(const Allocation& allocation, Stream stream) const {
  if (allocation.ptr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: deallocate of a null pointer", name()));
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: deallocate of %p (device %d) on a stream of device %d, but this resource serves "
      "device %d",
      name(), allocation.ptr, allocation.device(), stream.device, device()));
}

absl::Status MemoryResource::DeallocateAfterSync(const Allocation& allocation) noexcept {
  if (allocation.ptr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: deallocate of a null pointer", name()));
  }
  if (allocation.device() != device()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: deallocate of %p (device %d), but this resource serves device %d", name(),
        allocation.ptr, allocation.device(), device()));
  }
  return CallAtBoundaryNamed(
      [&] { return absl::StrFormat("%s: deallocate %p after a device synchronise", name(), allocation.ptr); },
      [&] { return DoDeallocateAfterSync(allocation); });
}

}  // namespace gpualloc
