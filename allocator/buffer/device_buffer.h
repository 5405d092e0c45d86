// DeviceBuffer: the unique owner of one device allocation. Move-only; the
// destructor returns the memory to its resource, in the order of the
// buffer's stream, and never throws (a failure is reported, see
// release_report.h, and counted by the resource).
//
//   absl::StatusOr<DeviceBuffer> buf = DeviceBuffer::Create(cache, 1 << 20, stream);
//   kernel<<<..., stream>>>(buf->data());
//   // freed here, ordered after the kernel on `stream`
#ifndef GPUALLOC_ALLOCATOR_BUFFER_DEVICE_BUFFER_H_
#define GPUALLOC_ALLOCATOR_BUFFER_DEVICE_BUFFER_H_

#include <memory>

#include "allocator/resource/memory_resource.h"

namespace gpualloc {

class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Create(std::shared_ptr<MemoryResource> resource,
                                             std::size_t bytes, Stream stream) noexcept;

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;  // frees what it held
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset().IgnoreError(); }

  void* data() const { return allocation_.ptr; }
  std::size_t size() const { return allocation_.bytes; }
  Stream stream() const { return allocation_.stream; }
  DeviceIndex device() const { return allocation_.device(); }
  bool empty() const { return allocation_.ptr == nullptr; }
  const std::shared_ptr<MemoryResource>& resource() const { return resource_; }

  // The buffer is now used on `stream`: it will be freed in that stream's order.
  void set_stream(Stream stream) { free_stream_ = stream; }
  // Frees now (in the current stream's order); the buffer becomes empty. The
  // Status says whether the resource took the memory back; on failure it is
  // reported, never silently lost.
  absl::Status Reset() noexcept;
  // Gives up ownership without freeing; the caller frees the result.
  Allocation Release() noexcept;

 private:
  DeviceBuffer(std::shared_ptr<MemoryResource> resource, Allocation allocation)
      : resource_(std::move(resource)), allocation_(allocation), free_stream_(allocation.stream) {}

  std::shared_ptr<MemoryResource> resource_;
  Allocation allocation_;
  Stream free_stream_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_DEVICE_BUFFER_H_
