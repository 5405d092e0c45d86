#include "allocator/caching/expandable_range.h"

#include <cstdio>
#include <new>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::StatusOr<PmrUniquePtr<ExpandableRange>> ExpandableRange::Reserve(
    std::shared_ptr<Backend> backend, DeviceIndex device, std::size_t max_bytes,
    std::pmr::memory_resource* metadata) {
  GPUALLOC_ASSIGN_OR_RETURN(DeviceProperties props,
                            CallAtBoundary("device properties", [&] {
                              return backend->GetDeviceProperties(device);
                            }));
  if (!props.supports_virtual_memory || props.vm_granularity == 0) {
    return absl::UnimplementedError(
        absl::StrFormat("device %d has no virtual-memory API: no expandable segments", device));
  }
  const std::optional<std::size_t> size = CheckedRoundUp(max_bytes, props.vm_granularity);
  if (!size || *size == 0) return absl::InvalidArgumentError("expandable range: bad size");
  // The object first: if its memory cannot be had, nothing is reserved yet.
  std::pmr::polymorphic_allocator<ExpandableRange> alloc(metadata);
  ExpandableRange* raw = alloc.allocate(1);
  absl::StatusOr<std::uintptr_t> base =
      CallAtBoundary("vm reserve", [&] { return backend->VmReserve(device, *size); });
  if (!base.ok()) {
    alloc.deallocate(raw, 1);
    return base.status();
  }
  // No-throw from here: the constructor only copies and adopts the resource.
  new (raw) ExpandableRange(std::move(backend), device, *base, *size, props.vm_granularity,
                            metadata);
  return PmrUniquePtr<ExpandableRange>(raw, PmrDeleter<ExpandableRange>{metadata});
}

ExpandableRange::~ExpandableRange() {
  absl::Status st = ReleaseEverything();
  if (!st.ok()) st = ReleaseEverything();  // one retry: faults may be transient
  if (!st.ok()) {
    std::fprintf(stderr, "ExpandableRange(device %d): release of %#zx failed: %s\n", device_,
                 static_cast<std::size_t>(base_), std::string(st.message()).c_str());
  }
}

absl::Status ExpandableRange::ReleaseEverything() {
  if (released_) return absl::OkStatus();
  GPUALLOC_RETURN_IF_ERROR(ReleaseStuck());
  GPUALLOC_RETURN_IF_ERROR(Shrink(mapped_bytes()));
  GPUALLOC_RETURN_IF_ERROR(
      CallAtBoundary("vm release", [&] { return backend_->VmRelease(base_, reserved_); }));
  released_ = true;
  return absl::OkStatus();
}

absl::Status ExpandableRange::Grow(std::size_t bytes) {
  if (bytes == 0 || bytes % granularity_ != 0 || bytes > reserved_ - mapped_bytes()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "expandable range: cannot grow by %d bytes (%d of %d mapped)", bytes, mapped_bytes(),
        reserved_));
  }
  // Chunks a failed rollback left mapped past the end must go first: nothing
  // may be mapped over them.
  GPUALLOC_RETURN_IF_ERROR(ReleaseStuck());
  const std::size_t start = mapped_bytes();
  const std::size_t n = bytes / granularity_;
  std::pmr::vector<PhysicalChunk> added(chunks_.get_allocator());
  // Fallible work first, so nothing below allocates: room for the new chunks
  // in chunks_, and room in stuck_ and unmapped_ for every chunk there will
  // be (the invariant that lets Shrink and the release paths never allocate).
  const std::size_t all = chunks_.size() + stuck_.size() + unmapped_.size() + n + 1;
  added.reserve(n);
  chunks_.reserve(chunks_.size() + n);
  stuck_.reserve(all);
  unmapped_.reserve(all);
  auto undo = [&](absl::Status cause) {
    // Everything this call did, in reverse. A step the backend refuses is
    // remembered (stuck_ / unmapped_) and retried later, never forgotten.
    for (std::size_t i = added.size(); i-- > 0;) {
      const std::uintptr_t at = base_ + start + i * granularity_;
      if (!CallAtBoundary("vm unmap", [&] { return backend_->VmUnmap(at, granularity_); }).ok()) {
        stuck_.push_back(Stuck{at, added[i]});
        continue;
      }
      if (!CallAtBoundary("vm release physical", [&] {
             return backend_->VmReleasePhysical(added[i]);
           }).ok()) {
        unmapped_.push_back(added[i]);
      }
    }
    return cause;
  };
  for (std::size_t offset = 0; offset < bytes; offset += granularity_) {
    absl::StatusOr<PhysicalChunk> chunk =
        CallAtBoundary("vm create", [&] { return backend_->VmCreate(device_, granularity_); });
    if (!chunk.ok()) return undo(chunk.status());
    const std::uintptr_t at = base_ + start + offset;
    absl::Status mapped = CallAtBoundary("vm map", [&] { return backend_->VmMap(at, *chunk); });
    if (!mapped.ok()) {
      if (!CallAtBoundary("vm release physical", [&] {
             return backend_->VmReleasePhysical(*chunk);
           }).ok()) {
        unmapped_.push_back(*chunk);
      }
      return undo(mapped);
    }
    added.push_back(*chunk);
  }
  absl::Status access = CallAtBoundary("vm set access", [&] {
    return backend_->VmSetAccess(base_ + start, bytes, device_);
  });
  if (!access.ok()) return undo(access);
  chunks_.insert(chunks_.end(), added.begin(), added.end());  // capacity reserved above
  return absl::OkStatus();
}

absl::Status ExpandableRange::Shrink(std::size_t bytes) {
  GPUALLOC_RETURN_IF_ERROR(ReleaseStuck());
  if (bytes % granularity_ != 0 || bytes > mapped_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expandable range: cannot shrink by %d bytes (%d mapped)", bytes, mapped_bytes()));
  }
  for (std::size_t n = bytes / granularity_; n > 0; --n) {
    const std::uintptr_t at = base_ + (chunks_.size() - 1) * granularity_;
    GPUALLOC_RETURN_IF_ERROR(
        CallAtBoundary("vm unmap", [&] { return backend_->VmUnmap(at, granularity_); }));
    // Unmapped: it leaves the range. Until the backend takes it back it is
    // kept in unmapped_ and retried, never forgotten.
    unmapped_.push_back(chunks_.back());  // capacity reserved by Grow: cannot throw
    chunks_.pop_back();
  }
  return ReleaseUnmapped();
}

absl::Status ExpandableRange::ReleaseStuck() {
  while (!stuck_.empty()) {
    const Stuck s = stuck_.back();
    GPUALLOC_RETURN_IF_ERROR(
        CallAtBoundary("vm unmap", [&] { return backend_->VmUnmap(s.address, granularity_); }));
    stuck_.pop_back();
    unmapped_.push_back(s.chunk);  // capacity reserved when it got stuck
  }
  return ReleaseUnmapped();
}

absl::Status ExpandableRange::ReleaseUnmapped() {
  while (!unmapped_.empty()) {
    const PhysicalChunk chunk = unmapped_.back();
    GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("vm release physical", [&] {
      return backend_->VmReleasePhysical(chunk);
    }));
    unmapped_.pop_back();
  }
  return absl::OkStatus();
}

}  // namespace gpualloc
