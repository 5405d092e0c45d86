#include "allocator/caching/expandable_range.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::StatusOr<std::unique_ptr<ExpandableRange>> ExpandableRange::Reserve(
    std::shared_ptr<Backend> backend, DeviceIndex device, std::size_t max_bytes) {
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
  GPUALLOC_ASSIGN_OR_RETURN(std::uintptr_t base, CallAtBoundary("vm reserve", [&] {
                              return backend->VmReserve(device, *size);
                            }));
  auto range = std::unique_ptr<ExpandableRange>(
      new ExpandableRange(backend, device, base, *size, props.vm_granularity));
  return range;
}

ExpandableRange::~ExpandableRange() {
  absl::Status st = Shrink(mapped_bytes());
  if (!st.ok()) st = Shrink(mapped_bytes());  // one retry: faults may be transient
  if (st.ok()) {
    st = CallAtBoundary("vm release", [&] { return backend_->VmRelease(base_, reserved_); });
  }
  if (!st.ok()) {
    std::fprintf(stderr, "ExpandableRange(device %d): release of %#zx failed: %s\n", device_,
                 static_cast<std::size_t>(base_), std::string(st.message()).c_str());
  }
}

absl::Status ExpandableRange::Grow(std::size_t bytes) {
  if (bytes == 0 || bytes % granularity_ != 0 || bytes > reserved_ - mapped_bytes()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "expandable range: cannot grow by %d bytes (%d of %d mapped)", bytes, mapped_bytes(),
        reserved_));
  }
  const std::size_t start = mapped_bytes();
  std::vector<PhysicalChunk> added;
  added.reserve(bytes / granularity_);  // fallible work first, so the final
  chunks_.reserve(chunks_.size() + bytes / granularity_);  // insert cannot throw
  auto undo = [&](absl::Status cause) {
    // Everything this call did, in reverse; the range is as before.
    for (std::size_t i = added.size(); i-- > 0;) {
      const std::uintptr_t at = base_ + start + i * granularity_;
      CallAtBoundary("vm unmap", [&] { return backend_->VmUnmap(at, granularity_); }).IgnoreError();
      CallAtBoundary("vm release physical", [&] {
        return backend_->VmReleasePhysical(added[i]);
      }).IgnoreError();
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
      CallAtBoundary("vm release physical", [&] {
        return backend_->VmReleasePhysical(*chunk);
      }).IgnoreError();
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
  if (bytes % granularity_ != 0 || bytes > mapped_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expandable range: cannot shrink by %d bytes (%d mapped)", bytes, mapped_bytes()));
  }
  GPUALLOC_RETURN_IF_ERROR(ReleaseUnmapped());
  unmapped_.reserve(unmapped_.size() + bytes / granularity_);  // fallible work first
  for (std::size_t n = bytes / granularity_; n > 0; --n) {
    const std::uintptr_t at = base_ + (chunks_.size() - 1) * granularity_;
    GPUALLOC_RETURN_IF_ERROR(
        CallAtBoundary("vm unmap", [&] { return backend_->VmUnmap(at, granularity_); }));
    // Unmapped: it leaves the range. Until the backend takes it back it is
    // kept in unmapped_ and retried, never forgotten.
    unmapped_.push_back(chunks_.back());
    chunks_.pop_back();
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
