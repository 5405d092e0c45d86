#include "allocator/buffer/device_buffer.h"

#include <utility>

#include "allocator/buffer/release_report.h"

namespace gpualloc {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Create(std::shared_ptr<MemoryResource> resource,
                                                  std::size_t bytes, Stream stream) noexcept {
  if (resource == nullptr) return absl::InvalidArgumentError("DeviceBuffer: null resource");
  absl::StatusOr<Allocation> a = resource->Allocate(bytes, stream);
  if (!a.ok()) return a.status();
  return DeviceBuffer(std::move(resource), *a);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : resource_(std::move(other.resource_)),
      allocation_(std::exchange(other.allocation_, Allocation{})),
      free_stream_(other.free_stream_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset().IgnoreError();
    resource_ = std::move(other.resource_);
    allocation_ = std::exchange(other.allocation_, Allocation{});
    free_stream_ = other.free_stream_;
  }
  return *this;
}

absl::Status DeviceBuffer::Reset() noexcept {
  if (allocation_.ptr == nullptr) return absl::OkStatus();
  absl::Status st = resource_->Deallocate(allocation_, free_stream_);  // noexcept
  if (!st.ok()) ReportReleaseFailure("DeviceBuffer", allocation_.ptr, allocation_.bytes, st);
  allocation_ = Allocation{};
  resource_.reset();
  return st;
}

Allocation DeviceBuffer::Release() noexcept {
  resource_.reset();
  return std::exchange(allocation_, Allocation{});
}

}  // namespace gpualloc
