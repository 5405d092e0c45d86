#include "allocator/transfer/transfers.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {
namespace {

// The common checks: a live span, on the stream's device, and a range inside it.
absl::Status CheckRange(const char* what, DeviceSpan span, std::size_t offset, std::size_t bytes,
                        Stream stream) {
  if (span.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: the buffer is empty or was freed", what));
  }
  if (span.device != stream.device) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: the buffer is on device %d but the stream on device %d", what, span.device,
        stream.device));
  }
  const std::optional<std::size_t> end = CheckedAdd(offset, bytes);
  if (!end || *end > span.size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: [%d, %d + %d) is past the end of a %d-byte buffer%s", what, offset, offset, bytes,
        span.size, end ? "" : " (offset + size overflows)"));
  }
  return absl::OkStatus();
}

void* At(DeviceSpan s, std::size_t offset) { return static_cast<char*>(s.data) + offset; }

}  // namespace

Completion::State::~State() {
  const absl::Status st =
      CallAtBoundary("event destroy", [&] { return backend->DestroyEvent(event); });
  if (!st.ok()) {  // a lost device: the event is gone with it, but say so
    std::fprintf(stderr, "gpualloc: a transfer's completion could not destroy its event: %s\n",
                 std::string(st.message()).c_str());
  }
}

absl::StatusOr<Completion> Completion::Record(std::shared_ptr<Backend> backend, Stream stream) {
  GPUALLOC_ASSIGN_OR_RETURN(Event e, CallAtBoundary("event create", [&] {
                              return backend->CreateEvent(stream.device);
                            }));
  Completion c;
  c.state_ = std::make_shared<State>(backend, e, stream);
  GPUALLOC_RETURN_IF_ERROR(
      CallAtBoundary("event record", [&] { return backend->RecordEvent(e, stream); }));
  return c;
}

absl::Status Completion::Wait() const {
  return CallAtBoundary("event synchronize",
                        [&] { return state_->backend->SynchronizeEvent(state_->event); });
}

absl::StatusOr<bool> Completion::Done() const {
  return CallAtBoundary("event query", [&] { return state_->backend->QueryEvent(state_->event); });
}

absl::Status Completion::Then(Stream stream) const {
  return CallAtBoundary("stream wait",
                        [&] { return state_->backend->StreamWaitEvent(stream, state_->event); });
}

absl::StatusOr<Completion> Transfers::ToDevice(DeviceSpan dst, std::size_t dst_offset,
                                               const void* src, std::size_t bytes,
                                               Stream stream) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("copy to device", dst, dst_offset, bytes, stream));
  if (src == nullptr) return absl::InvalidArgumentError("copy to device: null host source");
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memcpy async", [&] {
    return backend_->MemcpyAsync(At(dst, dst_offset), src, bytes, CopyKind::kHostToDevice, stream);
  }));
  return Completion::Record(backend_, stream);
}

absl::StatusOr<Completion> Transfers::ToHost(void* dst, DeviceSpan src, std::size_t src_offset,
                                             std::size_t bytes, Stream stream) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("copy to host", src, src_offset, bytes, stream));
  if (dst == nullptr) return absl::InvalidArgumentError("copy to host: null host destination");
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memcpy async", [&] {
    return backend_->MemcpyAsync(dst, At(src, src_offset), bytes, CopyKind::kDeviceToHost, stream);
  }));
  return Completion::Record(backend_, stream);
}

absl::StatusOr<Completion> Transfers::DeviceToDevice(DeviceSpan dst, std::size_t dst_offset,
                                                     DeviceSpan src, std::size_t src_offset,
                                                     std::size_t bytes, Stream stream) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("device copy (destination)", dst, dst_offset, bytes, stream));
  GPUALLOC_RETURN_IF_ERROR(CheckRange("device copy (source)", src, src_offset, bytes, stream));
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memcpy async", [&] {
    return backend_->MemcpyAsync(At(dst, dst_offset), At(src, src_offset), bytes,
                                 CopyKind::kDeviceToDevice, stream);
  }));
  return Completion::Record(backend_, stream);
}

absl::StatusOr<Completion> Transfers::PeerToPeer(DeviceSpan dst, std::size_t dst_offset,
                                                 DeviceSpan src, std::size_t src_offset,
                                                 std::size_t bytes, Stream stream) const {
  if (stream.device != dst.device && stream.device != src.device) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "peer copy: a stream of device %d for a copy from device %d to device %d", stream.device,
        src.device, dst.device));
  }
  // The range checks, each against its own device's stream.
  GPUALLOC_RETURN_IF_ERROR(CheckRange("peer copy (destination)", dst, dst_offset, bytes,
                                      Stream{stream.handle, dst.device}));
  GPUALLOC_RETURN_IF_ERROR(CheckRange("peer copy (source)", src, src_offset, bytes,
                                      Stream{stream.handle, src.device}));
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memcpy peer async", [&] {
    return backend_->MemcpyPeerAsync(At(dst, dst_offset), dst.device, At(src, src_offset),
                                     src.device, bytes, stream);
  }));
  return Completion::Record(backend_, stream);
}

absl::StatusOr<Completion> Transfers::Fill(DeviceSpan dst, std::size_t offset, int value,
                                           std::size_t bytes, Stream stream) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("fill", dst, offset, bytes, stream));
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memset async", [&] {
    return backend_->MemsetAsync(At(dst, offset), value, bytes, stream);
  }));
  return Completion::Record(backend_, stream);
}

absl::Status Transfers::ToDeviceSync(DeviceSpan dst, std::size_t dst_offset, const void* src,
                                     std::size_t bytes, Stream stream) const {
  GPUALLOC_ASSIGN_OR_RETURN(Completion c, ToDevice(dst, dst_offset, src, bytes, stream));
  return c.Wait();
}

absl::Status Transfers::ToHostSync(void* dst, DeviceSpan src, std::size_t src_offset,
                                   std::size_t bytes, Stream stream) const {
  GPUALLOC_ASSIGN_OR_RETURN(Completion c, ToHost(dst, src, src_offset, bytes, stream));
  return c.Wait();
}

}  // namespace gpualloc
