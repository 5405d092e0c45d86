// PlantedBugResource: a MemoryResource adaptor with one real allocator bug
// planted on purpose, so the harness can prove it catches such bugs (the
// stress runner's --inject_bug, the schedule explorer's --plant_bug). It
// lives in harness/ only: production allocators carry no test scaffolding.
//
// The bug is a classic of front caches, a use-after-free: the first block
// freed after Arm() is given back upstream *and* kept. Once the upstream
// hands that memory to someone else, the next request that fits is served
// from the kept block, so two live allocations overlap. Frees of that
// phantom block are swallowed (the upstream never gave it out).
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

  // Plants the bug: the next free is the one that is kept.
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
  std::optional<Allocation> kept_;          // freed upstream, still remembered
  bool kept_reused_upstream_ = false;       // the upstream handed its memory out again
  absl::flat_hash_set<void*> phantoms_;     // handed out from kept_, live
  bool fired_ = false;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_TESTING_PLANTED_BUG_RESOURCE_H_
