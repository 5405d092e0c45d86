#include "harness/conformance/example/first_fit_resource.h"

#include <iterator>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"

namespace gpualloc::harness {

absl::StatusOr<std::unique_ptr<FirstFitResource>> FirstFitResource::Create(
    std::shared_ptr<Backend> backend, DeviceIndex device, std::size_t arena_bytes) {
  absl::StatusOr<void*> base = backend->Malloc(device, arena_bytes);
  if (!base.ok()) return base.status();
  return std::unique_ptr<FirstFitResource>(
      new FirstFitResource(std::move(backend), device, *base, arena_bytes));
}

FirstFitResource::FirstFitResource(std::shared_ptr<Backend> backend, DeviceIndex device,
                                   void* base, std::size_t bytes)
    : backend_(std::move(backend)),
      device_(device),
      base_(reinterpret_cast<std::uintptr_t>(base)),
      bytes_(bytes) {
  free_.emplace(base_, bytes_);
  stats_.reserved_bytes.Add(static_cast<std::int64_t>(bytes_));
  stats_.segments.Add(1);
  stats_.upstream_allocs = 1;
}

FirstFitResource::~FirstFitResource() {
  backend_->Free(device_, reinterpret_cast<void*>(base_)).IgnoreError();
}

MemoryStats FirstFitResource::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<Allocation> FirstFitResource::DoAllocate(std::size_t bytes, Stream stream) {
  const std::optional<std::size_t> size = CheckedRoundUp(bytes, 256);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = free_.begin(); size && it != free_.end(); ++it) {
    if (it->second < *size) continue;
    const std::uintptr_t p = it->first;
    const std::size_t rest = it->second - *size;
    free_.erase(it);
    if (rest) free_.emplace(p + *size, rest);
    used_.emplace(p, std::make_pair(*size, bytes));
    stats_.allocated_bytes.Add(static_cast<std::int64_t>(*size));
    stats_.active_blocks.Add(1);
    return Allocation{reinterpret_cast<void*>(p), bytes, stream};
  }
  ++stats_.oom_events;
  return absl::ResourceExhaustedError(
      absl::StrFormat("first-fit arena of %d bytes has no room for %d", bytes_, bytes));
}

absl::Status FirstFitResource::DoDeallocate(const Allocation& a, Stream stream) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = used_.find(reinterpret_cast<std::uintptr_t>(a.ptr));
    if (it == used_.end() || it->second.second != a.bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "first-fit arena: %p is not a live allocation of %d bytes", a.ptr, a.bytes));
    }
  }
  // The freed range goes to every stream at once, so the work still queued
  // on it must finish first: the simplest correct rule (the caching allocator
  // waits on the device with events instead). The conformance suite's stream
  // cases fail without this wait.
  absl::Status waited = backend_->SynchronizeStream(stream);
  if (waited.ok() && stream != a.stream) waited = backend_->SynchronizeStream(a.stream);
  if (!waited.ok()) return waited;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = used_.find(reinterpret_cast<std::uintptr_t>(a.ptr));
  if (it == used_.end() || it->second.second != a.bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("first-fit arena: %p is not a live allocation of %d bytes", a.ptr, a.bytes));
  }
  std::uintptr_t p = it->first;
  std::size_t size = it->second.first;
  used_.erase(it);
  stats_.allocated_bytes.Sub(static_cast<std::int64_t>(size));
  stats_.active_blocks.Sub(1);
  auto next = free_.lower_bound(p);
  if (next != free_.end() && next->first == p + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin() && std::prev(next)->first + std::prev(next)->second == p) {
    auto prev = std::prev(next);
    p = prev->first;
    size += prev->second;
    free_.erase(prev);
  }
  free_.emplace(p, size);
  return absl::OkStatus();
}

}  // namespace gpualloc::harness
