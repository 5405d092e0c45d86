#include "allocator/resource/backend_resource.h"

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

BackendResource::BackendResource(std::shared_ptr<Backend> backend, DeviceIndex device,
                                 std::size_t alignment)
    : backend_(std::move(backend)), device_(device), alignment_(alignment) {}

void BackendResource::CountLocked(std::int64_t bytes, int sign) {
  // Every allocation is its own segment: allocated = requested = reserved.
  for (StatCounter* c : {&stats_.allocated_bytes, &stats_.requested_bytes, &stats_.reserved_bytes}) {
    sign > 0 ? c->Add(bytes) : c->Sub(bytes);
  }
  for (StatCounter* c : {&stats_.active_blocks, &stats_.segments}) sign > 0 ? c->Add(1) : c->Sub(1);
}

MemoryStats BackendResource::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

absl::StatusOr<Allocation> BackendResource::DoAllocate(std::size_t bytes, Stream stream) {
  absl::StatusOr<void*> ptr =
      CallAtBoundary("backend malloc", [&] { return backend_->Malloc(device_, bytes); });
  MutexLock lock(mu_);
  if (!ptr.ok()) {
    if (ptr.status().code() == absl::StatusCode::kResourceExhausted) ++stats_.oom_events;
    return ptr.status();
  }
  try {
    live_.emplace(*ptr, bytes);
  } catch (...) {
    // Host metadata failed after the device allocation: give it back.
    CallAtBoundary("backend free", [&] { return backend_->Free(device_, *ptr); }).IgnoreError();
    throw;
  }
  CountLocked(static_cast<std::int64_t>(bytes), +1);
  ++stats_.upstream_allocs;
  ++stats_.cache_misses;
  return Allocation{*ptr, bytes, stream};
}

absl::Status BackendResource::DoDeallocate(const Allocation& allocation, Stream) {
  // Taken out before the backend free: once the backend has the memory back,
  // another thread may receive the same pointer and must find no entry. A
  // second free of the same pointer finds nothing and is rejected.
  LiveMap::node_type entry;
  {
    MutexLock lock(mu_);
    auto it = live_.find(allocation.ptr);
    if (it == live_.end()) {
      ++stats_.failed_frees;
      return absl::InvalidArgumentError(absl::StrFormat(
          "backend resource: %p was not allocated here (foreign pointer) or was already freed",
          allocation.ptr));
    }
    entry = live_.extract(it);
  }
  // A throwing backend must not unwind past the entry taken out above.
  absl::Status st =
      CallAtBoundary("backend free", [&] { return backend_->Free(device_, allocation.ptr); });
  MutexLock lock(mu_);
  if (!st.ok()) {
    live_.insert(std::move(entry));  // still ours: a retry can free it
    ++stats_.failed_frees;
    return st;
  }
  CountLocked(static_cast<std::int64_t>(entry.mapped()), -1);
  ++stats_.upstream_frees;
  return absl::OkStatus();
}

}  // namespace gpualloc
