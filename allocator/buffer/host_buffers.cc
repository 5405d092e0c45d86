#include "allocator/buffer/host_buffers.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "allocator/buffer/release_report.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

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

namespace {

// [offset, offset+n) within `size` bytes, with no wrap-around.
absl::Status CheckRange(absl::string_view what, std::size_t size, std::size_t offset,
                        std::size_t n) {
  if (offset > size || n > size - offset) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s: [%d, +%d) is outside the buffer's %d bytes", what, offset, n, size));
  }
  return absl::OkStatus();
}

absl::Status HostAccess(absl::string_view what, Backend& backend, void* base, std::size_t size,
                        std::size_t offset, std::size_t n, AccessMode mode) {
  if (base == nullptr) return absl::FailedPreconditionError(absl::StrCat(what, ": empty buffer"));
  GPUALLOC_RETURN_IF_ERROR(CheckRange(what, size, offset, n));
  if (n == 0) return absl::OkStatus();
  return CallAtBoundary("note host access", [&] {
    return backend.NoteHostAccess(static_cast<char*>(base) + offset, n, mode);
  });
}

}  // namespace

absl::Status PinnedBuffer::RecordStream(Stream stream) const {
  if (block_.ptr == nullptr) return absl::FailedPreconditionError("PinnedBuffer: empty buffer");
  return CallAtBoundary("pinned record stream",
                        [&] { return allocator_->RecordStream(block_, stream); });
}

absl::Status PinnedBuffer::HostWrite(std::size_t offset, const void* src, std::size_t n) const {
  if (allocator_ == nullptr) return absl::FailedPreconditionError("PinnedBuffer: empty buffer");
  GPUALLOC_RETURN_IF_ERROR(HostAccess("PinnedBuffer::HostWrite", allocator_->backend(),
                                      block_.ptr, size_, offset, n, AccessMode::kWrite));
  if (n > 0) std::memcpy(static_cast<char*>(block_.ptr) + offset, src, n);
  return absl::OkStatus();
}

absl::Status PinnedBuffer::HostRead(std::size_t offset, void* dst, std::size_t n) const {
  if (allocator_ == nullptr) return absl::FailedPreconditionError("PinnedBuffer: empty buffer");
  GPUALLOC_RETURN_IF_ERROR(HostAccess("PinnedBuffer::HostRead", allocator_->backend(),
                                      block_.ptr, size_, offset, n, AccessMode::kRead));
  if (n > 0) std::memcpy(dst, static_cast<const char*>(block_.ptr) + offset, n);
  return absl::OkStatus();
}

absl::Status UnifiedBuffer::HostWrite(std::size_t offset, const void* src, std::size_t n) const {
  if (backend_ == nullptr) return absl::FailedPreconditionError("UnifiedBuffer: empty buffer");
  GPUALLOC_RETURN_IF_ERROR(HostAccess("UnifiedBuffer::HostWrite", *backend_, ptr_, size_, offset,
                                      n, AccessMode::kWrite));
  if (n > 0) std::memcpy(static_cast<char*>(ptr_) + offset, src, n);
  return absl::OkStatus();
}

absl::Status UnifiedBuffer::HostRead(std::size_t offset, void* dst, std::size_t n) const {
  if (backend_ == nullptr) return absl::FailedPreconditionError("UnifiedBuffer: empty buffer");
  GPUALLOC_RETURN_IF_ERROR(HostAccess("UnifiedBuffer::HostRead", *backend_, ptr_, size_, offset,
                                      n, AccessMode::kRead));
  if (n > 0) std::memcpy(dst, static_cast<const char*>(ptr_) + offset, n);
  return absl::OkStatus();
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
