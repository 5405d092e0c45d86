// ResizableBuffer: device memory that grows by a factor up to a maximum,
// keeping its contents (a device-to-device copy on the buffer's stream), and
// shrinks on request. A failed resize leaves the old buffer and its contents
// exactly as they were.
#ifndef GPUALLOC_ALLOCATOR_BUFFER_RESIZABLE_BUFFER_H_
#define GPUALLOC_ALLOCATOR_BUFFER_RESIZABLE_BUFFER_H_

#include <memory>

#include "allocator/backend/backend.h"
#include "allocator/buffer/device_buffer.h"

namespace gpualloc {

struct ResizableOptions {
  double growth_factor = 1.5;        // capacity grows at least by this factor
  std::size_t max_bytes = ~std::size_t{0};
};

class ResizableBuffer {
 public:
  ResizableBuffer(std::shared_ptr<MemoryResource> resource, std::shared_ptr<Backend> backend,
                  Stream stream, ResizableOptions options = {});

  void* data() const { return buffer_.data(); }
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return buffer_.size(); }
  Stream stream() const { return stream_; }

  // Makes size() == bytes, growing capacity (by the growth factor, capped at
  // max_bytes) and preserving the first min(old size, bytes) bytes.
  // ResourceExhausted beyond max_bytes; on any failure nothing changed.
  absl::Status Resize(std::size_t bytes);
  // Reallocates to exactly size() bytes (contents kept). No-op when already so.
  absl::Status ShrinkToFit();

 private:
  absl::Status Reallocate(std::size_t capacity);

  const std::shared_ptr<MemoryResource> resource_;
  const std::shared_ptr<Backend> backend_;
  const Stream stream_;
  const ResizableOptions options_;
  DeviceBuffer buffer_;
  std::size_t size_ = 0;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_RESIZABLE_BUFFER_H_
