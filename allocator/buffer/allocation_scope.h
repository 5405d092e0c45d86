// AllocationScope: allocations that share one lifetime — a request, a
// training step. Everything allocated through the scope is released when it
// ends, including when it ends by an exception; live/peak/count stats show
// what the scope used. A Builder pre-allocates a known set up front,
// all-or-nothing.
//
//   AllocationScope step(cache, stream);
//   float* activations = step.AllocateArray<float>(n).value();
//   ...                                   // freed when `step` goes out of scope
//
// Not thread-safe: a scope belongs to one thread at a time.
#ifndef GPUALLOC_ALLOCATOR_BUFFER_ALLOCATION_SCOPE_H_
#define GPUALLOC_ALLOCATOR_BUFFER_ALLOCATION_SCOPE_H_

#include <memory>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

class AllocationScope {
 public:
  class Builder;

  AllocationScope(std::shared_ptr<MemoryResource> resource, Stream stream)
      : resource_(std::move(resource)), stream_(stream) {}
  ~AllocationScope() { ReleaseAll().IgnoreError(); }
  AllocationScope(const AllocationScope&) = delete;
  AllocationScope& operator=(const AllocationScope&) = delete;

  absl::StatusOr<void*> Allocate(std::size_t bytes) noexcept;
  // `count` elements of T; the byte size is computed without overflow.
  template <typename T>
  absl::StatusOr<T*> AllocateArray(std::size_t count) noexcept {
    const std::optional<std::size_t> bytes = CheckedMul(count, sizeof(T));
    if (!bytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("AllocationScope: %d x %d bytes overflows", count, sizeof(T)));
    }
    absl::StatusOr<void*> p = Allocate(*bytes);
    if (!p.ok()) return p.status();
    return static_cast<T*>(*p);
  }
  // The i-th allocation made (a Builder's pre-allocations come first).
  void* at(std::size_t i) const { return i < live_.size() ? live_[i].ptr : nullptr; }

  // Frees everything now; reports (and returns) the first failure.
  absl::Status ReleaseAll() noexcept;

  std::size_t live_bytes() const { return live_bytes_; }
  std::size_t peak_bytes() const { return peak_bytes_; }
  std::size_t count() const { return live_.size(); }

 private:
  std::shared_ptr<MemoryResource> resource_;
  Stream stream_;
  std::vector<Allocation> live_;
  std::size_t live_bytes_ = 0;
  std::size_t peak_bytes_ = 0;
};

class AllocationScope::Builder {
 public:
  Builder(std::shared_ptr<MemoryResource> resource, Stream stream)
      : resource_(std::move(resource)), stream_(stream) {}
  Builder& Add(std::size_t bytes) {
    sizes_.push_back(bytes);
    return *this;
  }
  // Allocates every size added, in order; if one fails, the ones before are
  // freed and the error returned.
  absl::StatusOr<std::unique_ptr<AllocationScope>> Build() const;

 private:
  std::shared_ptr<MemoryResource> resource_;
  Stream stream_;
  std::vector<std::size_t> sizes_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_ALLOCATION_SCOPE_H_
