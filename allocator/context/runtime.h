// Runtime: everything one device needs, created once per (type, index) by a
// Context: the backend that drives it, the properties it reported, and the
// device's caching allocator (which takes no device memory until used).
//
// Thread-safe: immutable after creation; the allocator is thread-safe.
#ifndef GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_
#define GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_

#include <memory>

#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/observe/tracking_adaptor.h"
#include "allocator/context/device.h"

namespace gpualloc {

class Runtime {
 public:
  // Queries the device through `backend`; fails (and creates nothing) if the
  // device does not exist or the backend fails or throws.
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(Device device,
                                                         std::shared_ptr<Backend> backend,
                                                         CachingOptions caching = {},
                                                         bool track_allocations = false);

  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  Device device() const { return device_; }
  Backend& backend() const { return *backend_; }
  const std::shared_ptr<Backend>& shared_backend() const { return backend_; }
  const DeviceProperties& properties() const { return properties_; }
  // The device's caching allocator.
  const std::shared_ptr<CachingAllocator>& allocator() const { return allocator_; }
  // What allocations should go through: the tracking adaptor over the
  // allocator when the context tracks allocations, else the allocator.
  MemoryResource& resource() const {
    return tracker_ ? static_cast<MemoryResource&>(*tracker_) : *allocator_;
  }
  // Null unless the context tracks allocations.
  const std::shared_ptr<TrackingAdaptor>& tracker() const { return tracker_; }

 private:
  Runtime(Device device, std::shared_ptr<Backend> backend, DeviceProperties properties,
          std::shared_ptr<CachingAllocator> allocator, std::shared_ptr<TrackingAdaptor> tracker)
      : device_(device),
        backend_(std::move(backend)),
        properties_(std::move(properties)),
        allocator_(std::move(allocator)),
        tracker_(std::move(tracker)) {}

  const Device device_;
  const std::shared_ptr<Backend> backend_;
  const DeviceProperties properties_;
  const std::shared_ptr<CachingAllocator> allocator_;
  const std::shared_ptr<TrackingAdaptor> tracker_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_
