// SharedMemory: reference-counted device memory. Copies share one
// allocation; the last owner frees it exactly once, from whatever thread.
// Views (sub-ranges) keep the whole allocation alive.
//
// Creation is exception-safe where the design the risk review examined was
// not: if allocating the control block throws (std::bad_alloc), the device
// memory just obtained is returned before the error is reported, and the
// deleter is noexcept — a failed free is reported, never thrown.
//
// Thread-safe like std::shared_ptr: copies may live and die on any thread.
#ifndef GPUALLOC_ALLOCATOR_BUFFER_SHARED_MEMORY_H_
#define GPUALLOC_ALLOCATOR_BUFFER_SHARED_MEMORY_H_

#include <memory>
#include <new>

#include "absl/strings/str_format.h"
#include "allocator/buffer/release_report.h"
#include "allocator/common/checked_math.h"
#include "allocator/resource/memory_resource.h"

namespace gpualloc {

class SharedMemory {
 public:
  // `metadata` allocates the control block (std::allocator by default; tests
  // pass one that throws to prove nothing leaks).
  template <typename MetadataAllocator = std::allocator<char>>
  static absl::StatusOr<SharedMemory> Allocate(std::shared_ptr<MemoryResource> resource,
                                               std::size_t bytes, Stream stream,
                                               const MetadataAllocator& metadata = {}) noexcept;

  SharedMemory() = default;

  void* data() const { return block_ ? static_cast<char*>(block_->allocation.ptr) + offset_ : nullptr; }
  std::size_t size() const { return size_; }
  DeviceIndex device() const { return block_ ? block_->allocation.device() : 0; }
  Stream stream() const { return block_ ? block_->allocation.stream : Stream{}; }
  long use_count() const { return block_.use_count(); }
  explicit operator bool() const { return block_ != nullptr; }

  // [offset, offset + size) of this memory, sharing ownership of the whole.
  // InvalidArgument when the range does not fit, including when offset + size
  // wraps around (checked, never a wild pointer).
  absl::StatusOr<SharedMemory> View(std::size_t offset, std::size_t size) const;

 private:
  struct Block {
    Block(std::shared_ptr<MemoryResource> r, Allocation a) : resource(std::move(r)), allocation(a) {}
    ~Block() {  // the deleter: noexcept, reports instead of throwing
      absl::Status st = resource->Deallocate(allocation);
      if (!st.ok()) ReportReleaseFailure("SharedMemory", allocation.ptr, allocation.bytes, st);
    }
    std::shared_ptr<MemoryResource> resource;
    Allocation allocation;
  };

  std::shared_ptr<Block> block_;
  std::size_t offset_ = 0;
  std::size_t size_ = 0;
};

template <typename MetadataAllocator>
absl::StatusOr<SharedMemory> SharedMemory::Allocate(std::shared_ptr<MemoryResource> resource,
                                                    std::size_t bytes, Stream stream,
                                                    const MetadataAllocator& metadata) noexcept {
  if (resource == nullptr) return absl::InvalidArgumentError("SharedMemory: null resource");
  absl::StatusOr<Allocation> a = resource->Allocate(bytes, stream);
  if (!a.ok()) return a.status();
  SharedMemory out;
  try {
    out.block_ = std::allocate_shared<Block>(metadata, resource, *a);
  } catch (...) {
    // The device memory must not leak because the host could not track it.
    absl::Status st = resource->Deallocate(*a);
    if (!st.ok()) ReportReleaseFailure("SharedMemory", a->ptr, a->bytes, st);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "SharedMemory: the control block for %d bytes could not be allocated; the device "
        "memory was returned",
        bytes));
  }
  out.size_ = bytes;
  return out;
}

inline absl::StatusOr<SharedMemory> SharedMemory::View(std::size_t offset, std::size_t size) const {
  const std::optional<std::size_t> end = CheckedAdd(offset, size);
  if (!block_ || !end || *end > size_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SharedMemory view [%d, %d + %d) does not fit in %d bytes%s", offset, offset, size, size_,
        end ? "" : " (offset + size overflows)"));
  }
  SharedMemory view = *this;
  view.offset_ = offset_ + offset;
  view.size_ = size;
  return view;
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_SHARED_MEMORY_H_
