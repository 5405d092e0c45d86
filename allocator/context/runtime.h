// Runtime: everything one device needs, created once per (type, index) by a
// Context: the backend that drives it and the properties it reported.
//
// Thread-safe: immutable after creation.
#ifndef GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_
#define GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_

#include <memory>

#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/context/device.h"

namespace gpualloc {

class Runtime {
 public:
  // Queries the device through `backend`; fails (and creates nothing) if the
  // device does not exist or the backend fails or throws.
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(Device device,
                                                         std::shared_ptr<Backend> backend);

  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  Device device() const { return device_; }
  Backend& backend() const { return *backend_; }
  const std::shared_ptr<Backend>& shared_backend() const { return backend_; }
  const DeviceProperties& properties() const { return properties_; }

 private:
  Runtime(Device device, std::shared_ptr<Backend> backend, DeviceProperties properties)
      : device_(device), backend_(std::move(backend)), properties_(std::move(properties)) {}

  const Device device_;
  const std::shared_ptr<Backend> backend_;
  const DeviceProperties properties_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CONTEXT_RUNTIME_H_
