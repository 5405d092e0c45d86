// A deliberately simple allocator, to show how a user runs the conformance
// suite on an allocator of their own: one fixed arena from the backend,
// carved first-fit from a free list, one mutex; a free waits on the host for
// the streams that used the block, since the range is reusable on any stream
// afterwards. Not fast, but correct — the suite checks exactly that.
#ifndef GPUALLOC_HARNESS_CONFORMANCE_EXAMPLE_FIRST_FIT_RESOURCE_H_
#define GPUALLOC_HARNESS_CONFORMANCE_EXAMPLE_FIRST_FIT_RESOURCE_H_

#include <map>
#include <memory>
#include <mutex>

#include "allocator/backend/backend.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc::harness {

class FirstFitResource final : public MemoryResource {
 public:
  // Reserves `arena_bytes` from `backend` on `device` up front.
  static absl::StatusOr<std::unique_ptr<FirstFitResource>> Create(std::shared_ptr<Backend> backend,
                                                                   DeviceIndex device,
                                                                   std::size_t arena_bytes);
  ~FirstFitResource() override;

  absl::string_view name() const override { return "first-fit example"; }
  DeviceIndex device() const override { return device_; }
  std::size_t alignment() const override { return 256; }
  MemoryStats stats() const override;

 private:
  FirstFitResource(std::shared_ptr<Backend> backend, DeviceIndex device, void* base,
                   std::size_t bytes);
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;

  const std::shared_ptr<Backend> backend_;
  const DeviceIndex device_;
  const std::uintptr_t base_;
  const std::size_t bytes_;
  mutable std::mutex mu_;
  std::map<std::uintptr_t, std::size_t> free_;  // offset -> size, coalesced
  std::map<std::uintptr_t, std::pair<std::size_t, std::size_t>> used_;  // ptr -> (size, requested)
  MemoryStats stats_;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_CONFORMANCE_EXAMPLE_FIRST_FIT_RESOURCE_H_
