// PlantedBugResource: a MemoryResource adaptor with one real allocator bug
// planted on purpose, so the harness can prove it catches such bugs (the
// stress runner's --inject_bug, the schedule explorer's --plant_bug). It
// lives in harness/ only: production allocators carry no test scaffolding.
//
// The bug is a classic of caches that track blocks by hand: a block that is
// still live is handed out again. After Arm(), the next allocation served
// becomes the victim; the next request that fits in it, while the victim is
// still live, is served from the victim's memory, so two live allocations
// overlap. It fires within a few operations, whatever the timing. Frees of
// that phantom allocation are swallowed (the upstream never gave it out).
//
// Thread-safe: one mutex around the adaptor's own state.
#ifndef GPUALLOC_HARNESS_TESTING_PLANTED_BUG_RESOURCE_H_
#define GPUALLOC_HARNESS_TESTING_PLANTED_BUG_RESOURCE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/container/flat_hash_set.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc::harness {

class PlantedBugResource final : public MemoryResource {
 public:
  explicit PlantedBugResource(std::shared_ptr<MemoryResource> upstream)
      : upstream_(std::move(upstream)) {}

  // Plants the bug: the next allocation served becomes the victim.
  void Arm();
  // True once an overlapping (phantom) block was handed out.
  bool fired() const;

  absl::string_view name() const override { return "planted-bug"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override { return upstream_->stats(); }

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;

  const std::shared_ptr<MemoryResource> upstream_;
  mutable std::mutex mu_;
  bool armed_ = false;
  std::optional<Allocation> victim_;     // live: its memory is handed out again
  absl::flat_hash_set<void*> phantoms_;  // handed out from a victim, live
  bool fired_ = false;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TESTING_PLANTED_BUG_RESOURCE_H_
