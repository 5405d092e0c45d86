// std::pmr::memory_resource over our host-accessible memory, so standard
// containers can live in it:
//
//   PinnedPmrResource pinned(pinned_allocator, /*owner=*/0);
//   std::pmr::vector<float> staging(&pinned);   // page-locked: fast copies
//
// The std::pmr contract reports failure by throwing std::bad_alloc; that is
// the only place this project throws, and only to standard containers.
// Alignments above what the memory guarantees (256 bytes) are refused.
#ifndef GPUALLOC_ALLOCATOR_ADAPTERS_PMR_RESOURCES_H_
#define GPUALLOC_ALLOCATOR_ADAPTERS_PMR_RESOURCES_H_

#include <memory>
#include <memory_resource>

#include "allocator/backend/backend.h"
#include "allocator/host/pinned_host_allocator.h"

namespace gpualloc {

class PinnedPmrResource final : public std::pmr::memory_resource {
 public:
  PinnedPmrResource(std::shared_ptr<PinnedHostAllocator> allocator, DeviceIndex owner)
      : allocator_(std::move(allocator)), owner_(owner) {}

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override;

  std::shared_ptr<PinnedHostAllocator> allocator_;
  DeviceIndex owner_;
};

// Managed (unified) memory: host- and device-accessible.
class ManagedPmrResource final : public std::pmr::memory_resource {
 public:
  ManagedPmrResource(std::shared_ptr<Backend> backend, DeviceIndex device)
      : backend_(std::move(backend)), device_(device) {}

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override;

  std::shared_ptr<Backend> backend_;
  DeviceIndex device_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_ADAPTERS_PMR_RESOURCES_H_
