#include "allocator/buffer/host_buffers.h"

#include <utility>

#include "allocator/buffer/release_report.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

absl::StatusOr<PinnedBuffer> PinnedBuffer::Create(std::shared_ptr<PinnedHostAllocator> allocator,
                                                  std::size_t bytes, DeviceIndex owner) noexcept {
  if (allocator == nullptr) return absl::InvalidArgumentError("PinnedBuffer: null allocator");
  absl::StatusOr<PinnedBlock> b =
      CallAtBoundary("pinned allocate", [&] { return allocator->Allocate(bytes, owner); });
  if (!b.ok()) return b.status();
  PinnedBuffer out;
  out.allocator_ = std::move(allocator);
  out.block_ = *b;
  out.size_ = bytes;
  return out;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : allocator_(std::move(other.allocator_)),
      block_(std::exchange(other.block_, PinnedBlock{})),
      size_(std::exchange(other.size_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    Reset().IgnoreError();
    allocator_ = std::move(other.allocator_);
    block_ = std::exchange(other.block_, PinnedBlock{});
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() { Reset().IgnoreError(); }

absl::Status PinnedBuffer::Reset() noexcept {
  if (block_.ptr == nullptr) return absl::OkStatus();
  absl::Status st = CallAtBoundary("pinned free", [&] { return allocator_->Deallocate(block_); });
  if (!st.ok()) ReportReleaseFailure("PinnedBuffer", block_.ptr, block_.bytes, st);
  block_ = PinnedBlock{};
  size_ = 0;
  allocator_.reset();
  return st;
}

absl::StatusOr<UnifiedBuffer> UnifiedBuffer::Create(std::shared_ptr<Backend> backend,
                                                    std::size_t bytes, DeviceIndex device) noexcept {
  if (backend == nullptr) return absl::InvalidArgumentError("UnifiedBuffer: null backend");
  absl::StatusOr<void*> p =
      CallAtBoundary("malloc managed", [&] { return backend->MallocManaged(device, bytes); });
  if (!p.ok()) return p.status();
  UnifiedBuffer out;
  out.backend_ = std::move(backend);
  out.ptr_ = *p;
  out.size_ = bytes;
  out.device_ = device;
  return out;
}

UnifiedBuffer::UnifiedBuffer(UnifiedBuffer&& other) noexcept
    : backend_(std::move(other.backend_)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      device_(other.device_) {}

UnifiedBuffer& UnifiedBuffer::operator=(UnifiedBuffer&& other) noexcept {
  if (this != &other) {
    Reset().IgnoreError();
    backend_ = std::move(other.backend_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = other.device_;
  }
  return *this;
}

UnifiedBuffer::~UnifiedBuffer() { Reset().IgnoreError(); }

absl::Status UnifiedBuffer::Prefetch(DeviceIndex destination, Stream stream) const {
  if (ptr_ == nullptr) return absl::FailedPreconditionError("UnifiedBuffer: empty");
  return CallAtBoundary("prefetch",
                        [&] { return backend_->Prefetch(ptr_, size_, destination, stream); });
}

absl::Status UnifiedBuffer::Reset() noexcept {
  if (ptr_ == nullptr) return absl::OkStatus();
  absl::Status st = CallAtBoundary("free managed", [&] { return backend_->Free(device_, ptr_); });
  if (!st.ok()) ReportReleaseFailure("UnifiedBuffer", ptr_, size_, st);
  ptr_ = nullptr;
  size_ = 0;
  backend_.reset();
  return st;
}

}  // namespace gpualloc
