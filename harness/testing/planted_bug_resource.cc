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
    if (kept_ && kept_reused_upstream_ && bytes <= kept_->bytes) {
      // The bug: memory someone else now owns, handed out again.
      Allocation phantom{kept_->ptr, bytes, stream};
      kept_.reset();
      phantoms_.insert(phantom.ptr);
      fired_ = true;
      return phantom;
    }
  }
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  if (a.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (kept_ && a->ptr == kept_->ptr) kept_reused_upstream_ = true;
  }
  return a;
}

absl::Status PlantedBugResource::DoDeallocate(const Allocation& allocation, Stream stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phantoms_.erase(allocation.ptr) > 0) return absl::OkStatus();  // never the upstream's
  }
  absl::Status st = upstream_->Deallocate(allocation, stream);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (armed_) {
      armed_ = false;
      kept_ = allocation;  // freed, yet remembered: the planted bug
    }
  }
  return st;
}

}  // namespace gpualloc::harness
