#include "harness/testing/planted_bug_resource.h"

namespace gpualloc::harness {

void PlantedBugResource::Arm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = true;
}

bool PlantedBugResource::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

absl::StatusOr<Allocation> PlantedBugResource::DoAllocate(std::size_t bytes, Stream stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (armed_ && victim_ && bytes <= victim_->bytes) {
      // The bug: memory that is live, handed out a second time.
      armed_ = false;
      fired_ = true;
      const Allocation phantom{victim_->ptr, bytes, stream};
      phantoms_.insert(phantom.ptr);
      return phantom;
    }
  }
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (a.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (armed_ && !victim_) victim_ = *a;
  }
  return a;
}

absl::Status PlantedBugResource::DoDeallocate(const Allocation& allocation, Stream stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phantoms_.erase(allocation.ptr) > 0) return absl::OkStatus();  // never the upstream's
    // The victim freed before the bug fired: the next allocation is the new one.
    if (victim_ && victim_->ptr == allocation.ptr && armed_) victim_.reset();
  }
  return upstream_->Deallocate(allocation, stream);
}

}  // namespace gpualloc::harness
