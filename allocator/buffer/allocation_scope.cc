#include "allocator/buffer/allocation_scope.h"

#include <algorithm>

#include "allocator/buffer/release_report.h"

namespace gpualloc {

absl::StatusOr<void*> AllocationScope::Allocate(std::size_t bytes) noexcept {
  try {
    live_.reserve(live_.size() + 1);  // before the allocation: nothing to undo
  } catch (...) {
    return absl::ResourceExhaustedError("AllocationScope: no host memory to track one more");
  }
  absl::StatusOr<Allocation> a = resource_->Allocate(bytes, stream_);
  if (!a.ok()) return a.status();
  live_.push_back(*a);
  live_bytes_ += bytes;
  peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  return a->ptr;
}

absl::Status AllocationScope::ReleaseAll() noexcept {
  absl::Status first = absl::OkStatus();
  // Newest first, like destructors.
  for (auto it = live_.rbegin(); it != live_.rend(); ++it) {
    absl::Status st = resource_->Deallocate(*it);
    if (!st.ok()) {
      ReportReleaseFailure("AllocationScope", it->ptr, it->bytes, st);
      if (first.ok()) first = st;
    }
  }
  live_.clear();
  live_bytes_ = 0;
  return first;
}

absl::StatusOr<std::unique_ptr<AllocationScope>> AllocationScope::Builder::Build() const {
  auto scope = std::make_unique<AllocationScope>(resource_, stream_);
  for (std::size_t bytes : sizes_) {
    absl::StatusOr<void*> p = scope->Allocate(bytes);
    if (!p.ok()) return p.status();  // `scope` frees what it holds
  }
  return scope;
}

}  // namespace gpualloc
