// BackendResource: device memory straight from the backend (cudaMalloc /
// hipMalloc / the sim), no caching. The floor every other resource is
// measured against, and the upstream a caching allocator can sit on.
//
// It remembers what it handed out, so foreign pointers and double frees are
// rejected here with a clear message rather than passed to the runtime.
// Thread-safe: one mutex around the bookkeeping; backend calls run outside it.
#ifndef GPUALLOC_ALLOCATOR_RESOURCE_BACKEND_RESOURCE_H_
#define GPUALLOC_ALLOCATOR_RESOURCE_BACKEND_RESOURCE_H_

#include <memory>
#include <unordered_map>
#include <mutex>

#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

class BackendResource final : public MemoryResource {
 public:
  // `alignment` is what the backend guarantees for `device` (256 on CUDA).
  BackendResource(std::shared_ptr<Backend> backend, DeviceIndex device,
                  std::size_t alignment = 256);
  // Memory still allocated is left to the backend (reported by stats).
  ~BackendResource() override = default;

  absl::string_view name() const override { return "backend"; }
  DeviceIndex device() const override { return device_; }
  std::size_t alignment() const override { return alignment_; }
  MemoryStats stats() const override;

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  // Adds (sign > 0) or removes one allocation of `bytes` from the stats; mu_ held.
  void CountLocked(std::int64_t bytes, int sign);

  const std::shared_ptr<Backend> backend_;
  const DeviceIndex device_;
  const std::size_t alignment_;
  mutable Mutex mu_;
  // Standard node-based: an insert that throws changes nothing (an Abseil
  // flat table would be left corrupt), so the catch in DoAllocate is sound.
  using LiveMap = std::unordered_map<void*, std::size_t>;  // ptr -> bytes
  LiveMap live_ ABSL_GUARDED_BY(mu_);
  MemoryStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_RESOURCE_BACKEND_RESOURCE_H_
