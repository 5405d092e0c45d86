#include "allocator/buffer/resizable_buffer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

ResizableBuffer::ResizableBuffer(std::shared_ptr<MemoryResource> resource,
                                 std::shared_ptr<Backend> backend, Stream stream,
                                 ResizableOptions options)
    : resource_(std::move(resource)),
      backend_(std::move(backend)),
      stream_(stream),
      options_(options) {}

absl::Status ResizableBuffer::Resize(std::size_t bytes) {
  if (bytes > options_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "ResizableBuffer: %d bytes is over its maximum of %d", bytes, options_.max_bytes));
  }
  if (bytes <= capacity()) {
    size_ = bytes;
    return absl::OkStatus();
  }
  const double grown = std::ceil(static_cast<double>(capacity()) * options_.growth_factor);
  std::size_t target = bytes;
  if (grown > static_cast<double>(bytes)) {
    target = grown >= static_cast<double>(options_.max_bytes) ? options_.max_bytes
                                                              : static_cast<std::size_t>(grown);
  }
  absl::Status st = Reallocate(std::max(target, bytes));
  if (st.ok()) size_ = bytes;
  return st;
}

absl::Status ResizableBuffer::ShrinkToFit() {
  if (capacity() == size_) return absl::OkStatus();
  if (size_ == 0) return buffer_.Reset();
  return Reallocate(size_);
}

absl::Status ResizableBuffer::Reallocate(std::size_t capacity) {
  absl::StatusOr<DeviceBuffer> fresh = DeviceBuffer::Create(resource_, capacity, stream_);
  if (!fresh.ok()) return fresh.status();  // the old buffer is untouched
  const std::size_t keep = std::min(size_, capacity);
  if (keep > 0) {
    absl::Status copied = CallAtBoundary("resize copy", [&] {
      return backend_->MemcpyAsync(fresh->data(), buffer_.data(), keep,
                                   CopyKind::kDeviceToDevice, stream_);
    });
    if (!copied.ok()) return copied;  // `fresh` is freed; the old buffer is intact
  }
  buffer_ = *std::move(fresh);  // the old one is freed after the copy, in stream order
  return absl::OkStatus();
}

}  // namespace gpualloc
