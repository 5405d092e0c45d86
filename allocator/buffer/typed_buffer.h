// TypedBuffer<T>: a DeviceBuffer of `count` elements of T, its byte size
// computed without overflow (count * sizeof(T) that wraps is an error, never
// a small allocation).
#ifndef GPUALLOC_ALLOCATOR_BUFFER_TYPED_BUFFER_H_
#define GPUALLOC_ALLOCATOR_BUFFER_TYPED_BUFFER_H_

#include <type_traits>

#include "absl/strings/str_format.h"
#include "allocator/buffer/device_buffer.h"
#include "allocator/common/checked_math.h"

namespace gpualloc {

template <typename T>
class TypedBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "device buffers hold trivially copyable types");

 public:
  static absl::StatusOr<TypedBuffer> Create(std::shared_ptr<MemoryResource> resource,
                                            std::size_t count, Stream stream) noexcept {
    const std::optional<std::size_t> bytes = CheckedMul(count, sizeof(T));
    if (!bytes || count == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "TypedBuffer: %d elements of %d bytes %s", count, sizeof(T),
          count == 0 ? "is empty" : "overflows the size arithmetic"));
    }
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Create(std::move(resource), *bytes, stream);
    if (!b.ok()) return b.status();
    return TypedBuffer(*std::move(b), count);
  }

  T* data() const { return static_cast<T*>(buffer_.data()); }
  std::size_t count() const { return count_; }
  std::size_t size_bytes() const { return buffer_.size(); }
  DeviceBuffer& buffer() { return buffer_; }

 private:
  TypedBuffer(DeviceBuffer b, std::size_t count) : buffer_(std::move(b)), count_(count) {}
  DeviceBuffer buffer_;
  std::size_t count_ = 0;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BUFFER_TYPED_BUFFER_H_
