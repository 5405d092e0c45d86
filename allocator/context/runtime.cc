#include "allocator/context/runtime.h"

#include "absl/strings/str_cat.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(Device device,
                                                         std::shared_ptr<Backend> backend,
                                                         CachingOptions caching,
                                                         bool track_allocations) {
  const std::string op = absl::StrCat("creating the runtime for ", device.ToString());
  return CallAtBoundary(op, [&]() -> absl::StatusOr<std::unique_ptr<Runtime>> {
    if (backend == nullptr) return absl::FailedPreconditionError(absl::StrCat(op, ": no backend"));
    absl::StatusOr<DeviceProperties> props = backend->GetDeviceProperties(device.index);
    if (!props.ok()) {
      return absl::Status(props.status().code(),
                          absl::StrCat(op, ": ", props.status().message()));
    }
    absl::StatusOr<std::unique_ptr<CachingAllocator>> allocator =
        CachingAllocator::Create(backend, device.index, caching);
    if (!allocator.ok()) {
      return absl::Status(allocator.status().code(),
                          absl::StrCat(op, ": ", allocator.status().message()));
    }
    std::shared_ptr<CachingAllocator> cache = *std::move(allocator);
    std::shared_ptr<TrackingAdaptor> tracker =
        track_allocations ? std::make_shared<TrackingAdaptor>(cache) : nullptr;
    // No raw new escapes: the object is owned before anything else can fail.
    return std::unique_ptr<Runtime>(new Runtime(device, std::move(backend), *std::move(props),
                                                std::move(cache), std::move(tracker)));
  });
}

}  // namespace gpualloc
