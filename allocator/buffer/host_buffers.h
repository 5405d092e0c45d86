// PinnedBuffer and UnifiedBuffer: RAII owners of page-locked host memory and
// of managed (unified) memory. Move-only, noexcept destructors that report a
// failed release instead of throwing.
#ifndef GPUALLOC_ALLOCATOR_BUFFER_HOST_BUFFERS_H_
#define GPUALLOC_ALLOCATOR_BUFFER_HOST_BUFFERS_H_

#include <memory>

#include "allocator/backend/backend.h"
#include "allocator/host/pinned_host_allocator.h"

namespace gpualloc {

class PinnedBuffer {
 public:
  static absl::StatusOr<PinnedBuffer> Create(std::shared_ptr<PinnedHostAllocator> allocator,
                                             std::size_t bytes, DeviceIndex owner) noexcept;
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  ~PinnedBuffer();

  void* data() const { return block_.ptr; }
  std::size_t size() const { return size_; }
  DeviceIndex owner() const { return block_.owner; }
  // The buffer is used by work on `stream` (an async copy from or into it):
  // when it is released, its memory is not reused before that work is done.
  absl::Status RecordStream(Stream stream) const;
  // Host reads and writes of [offset, offset+n), bounds-checked and announced
  // to the backend (Backend::NoteHostAccess), so the sim's stream-order
  // checker sees a host write racing a copy still queued on the buffer.
  // Prefer these to touching data() directly.
  absl::Status HostWrite(std::size_t offset, const void* src, std::size_t n) const;
  absl::Status HostRead(std::size_t offset, void* dst, std::size_t n) const;
  absl::Status Reset() noexcept;

 private:
  std::shared_ptr<PinnedHostAllocator> allocator_;
  PinnedBlock block_;
  std::size_t size_ = 0;
};

// Managed memory: accessible from host and device, migrated on demand or by
// Prefetch.
class UnifiedBuffer {
 public:
  static absl::StatusOr<UnifiedBuffer> Create(std::shared_ptr<Backend> backend, std::size_t bytes,
                                              DeviceIndex device) noexcept;
  UnifiedBuffer() = default;
  UnifiedBuffer(UnifiedBuffer&& other) noexcept;
  UnifiedBuffer& operator=(UnifiedBuffer&& other) noexcept;
  ~UnifiedBuffer();

  void* data() const { return ptr_; }
  std::size_t size() const { return size_; }
  // Migrates the whole buffer to `destination` (a device or kHostDevice) in
  // the order of `stream`.
  absl::Status Prefetch(DeviceIndex destination, Stream stream) const;
  // Host reads and writes, bounds-checked and announced to the backend, as
  // PinnedBuffer's.
  absl::Status HostWrite(std::size_t offset, const void* src, std::size_t n) const;
  absl::Status HostRead(std::size_t offset, void* dst, std::size_t n) const;
  absl::Status Reset() noexcept;

 private:
  std::shared_ptr<Backend> backend_;
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
  DeviceIndex device_ = 0;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_HOST_BUFFERS_H_
