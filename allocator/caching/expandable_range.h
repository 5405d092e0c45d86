// ExpandableRange: one reserved virtual address range whose prefix is backed
// by physical chunks, grown and shrunk at its end. The caching allocator uses
// it for expandable segments: a workload of growing sizes extends one segment
// in place instead of stranding memory in many.
//
// Grow is all-or-nothing: if creating, mapping or enabling access to any
// chunk fails (or throws), or its bookkeeping cannot be allocated, everything
// this call did is undone and the range is exactly as before. Only Reserve
// and Grow allocate host memory (from the metadata resource Reserve is
// given); Shrink, ReleaseEverything and the destructor never do. Not
// thread-safe: the allocator's lock guards it.
#ifndef GPUALLOC_ALLOCATOR_CACHING_EXPANDABLE_RANGE_H_
#define GPUALLOC_ALLOCATOR_CACHING_EXPANDABLE_RANGE_H_

#include <cstdint>
#include <memory>
#include <memory_resource>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/common/pmr_object.h"

namespace gpualloc {

class ExpandableRange {
 public:
  // Reserves `max_bytes` (rounded up to the device's VM granularity). The
  // range and its lists live in `metadata`, which must outlive it; if that
  // throws, nothing is reserved. Unimplemented where the backend has no
  // virtual-memory API.
  static absl::StatusOr<PmrUniquePtr<ExpandableRange>> Reserve(
      std::shared_ptr<Backend> backend, DeviceIndex device, std::size_t max_bytes,
      std::pmr::memory_resource* metadata = std::pmr::new_delete_resource());
  // ReleaseEverything() if it has not succeeded yet; a failure is reported
  // on stderr (the caching allocator retires ranges whose release failed and
  // retries them instead of destroying them).
  ~ExpandableRange();
  ExpandableRange(const ExpandableRange&) = delete;
  ExpandableRange& operator=(const ExpandableRange&) = delete;

  std::uintptr_t base() const { return base_; }
  std::size_t mapped_bytes() const { return chunks_.size() * granularity_; }
  std::size_t reserved_bytes() const { return reserved_; }
  std::size_t granularity() const { return granularity_; }

  // Maps `bytes` (a multiple of the granularity) more at the end. If a step
  // of the rollback itself is refused, what it could not undo is kept and
  // undone first by the next Grow (or Shrink, or the destructor).
  absl::Status Grow(std::size_t bytes);
  // Unmaps and releases every chunk and the address reservation itself.
  // Safe to call again after a failure: it resumes where it stopped.
  absl::Status ReleaseEverything();

  // Unmaps and releases `bytes` (a multiple of the granularity) at the end.
  // A chunk the backend would not release is kept and retried by every later
  // Shrink and by the destructor, so none is ever lost.
  absl::Status Shrink(std::size_t bytes);

 private:
  ExpandableRange(std::shared_ptr<Backend> backend, DeviceIndex device, std::uintptr_t base,
                  std::size_t reserved, std::size_t granularity,
                  std::pmr::memory_resource* metadata)
      : backend_(std::move(backend)),
        device_(device),
        base_(base),
        reserved_(reserved),
        granularity_(granularity),
        chunks_(metadata),
        stuck_(metadata),
        unmapped_(metadata) {}

  const std::shared_ptr<Backend> backend_;
  const DeviceIndex device_;
  const std::uintptr_t base_;
  const std::size_t reserved_;
  const std::size_t granularity_;
  // Releases chunks already unmapped whose release failed before.
  absl::Status ReleaseUnmapped();
  // Unmaps and releases chunks a failed rollback left mapped past the end.
  absl::Status ReleaseStuck();

  struct Stuck {
    std::uintptr_t address;
    PhysicalChunk chunk;
  };
  // Every chunk is in exactly one of these lists. Grow keeps the capacity of
  // stuck_ and unmapped_ at least the number of chunks there are, so moving
  // chunks between them never allocates (and never throws).
  std::pmr::vector<PhysicalChunk> chunks_;    // chunk i is mapped at base + i * granularity
  std::pmr::vector<Stuck> stuck_;             // mapped past the end by a failed rollback: retried
  std::pmr::vector<PhysicalChunk> unmapped_;  // unmapped, not yet released: retried
  bool released_ = false;                // the reservation itself is gone
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CACHING_EXPANDABLE_RANGE_H_
