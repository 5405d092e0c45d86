#include "allocator/resource/memory_resource.h"

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"

// ci/revert-check.sh defines GPUALLOC_REVERT_RISK=<row of docs/risk-matrix.md>
// for this file alone, to put the reviewed fault back and show that the row's
// test then fails. Never defined in a real build.
#ifndef GPUALLOC_REVERT_RISK
#define GPUALLOC_REVERT_RISK 0
#endif

namespace gpualloc {

absl::StatusOr<Allocation> MemoryResource::Allocate(std::size_t bytes, Stream stream) noexcept {
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: zero-byte allocation requested", name()));
  }
  if (stream.device != device()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: allocation on a stream of device %d, but this resource serves device %d", name(),
        stream.device, device()));
  }
#if GPUALLOC_REVERT_RISK == 13
  return DoAllocate(bytes, stream);  // reverted: exceptions escape, mixed error handling
#else
  return CallAtBoundaryNamed([&] { return absl::StrFormat("%s: allocate %d bytes", name(), bytes); },
                             [&] { return DoAllocate(bytes, stream); });
#endif
}

absl::Status MemoryResource::Deallocate(const Allocation& allocation, Stream stream) noexcept {
  if (allocation.ptr == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: deallocate of a null pointer", name()));
  }
  if (allocation.device() != device() || stream.device != device()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: deallocate of %p (device %d) on a stream of device %d, but this resource serves "
        "device %d",
        name(), allocation.ptr, allocation.device(), stream.device, device()));
  }
  return CallAtBoundaryNamed(
      [&] { return absl::StrFormat("%s: deallocate %p", name(), allocation.ptr); },
      [&] { return DoDeallocate(allocation, stream); });
}

}  // namespace gpualloc
