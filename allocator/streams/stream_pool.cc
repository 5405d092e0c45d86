#include "allocator/streams/stream_pool.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::Status StreamPoolOptions::Validate() const {
  if (streams_per_priority < 1 || streams_per_priority > 1024) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream pool: streams_per_priority is %d; it must be between 1 and 1024",
        streams_per_priority));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StreamPool>> StreamPool::Create(std::shared_ptr<Backend> backend,
                                                              StreamPoolOptions options) {
  if (backend == nullptr) return absl::InvalidArgumentError("stream pool: null backend");
  GPUALLOC_RETURN_IF_ERROR(options.Validate());
  GPUALLOC_ASSIGN_OR_RETURN(int devices, CallAtBoundary("stream pool: counting devices", [&] {
                              return backend->DeviceCount();
                            }));
  return CallAtBoundary("stream pool: create",
                        [&]() -> absl::StatusOr<std::unique_ptr<StreamPool>> {
                          return std::unique_ptr<StreamPool>(
                              new StreamPool(std::move(backend), devices, options));
                        });
}

StreamPool::StreamPool(std::shared_ptr<Backend> backend, int devices, StreamPoolOptions options)
    : backend_(std::move(backend)), options_(options), devices_(devices) {
  MutexLock lock(mu_);
  pools_.resize(static_cast<std::size_t>(devices));
  for (auto& rings : pools_) {
    for (Ring& ring : rings) ring.slots.resize(static_cast<std::size_t>(options.streams_per_priority));
  }
}

StreamPool::~StreamPool() {
  MutexLock lock(mu_);
  for (auto& rings : pools_) {
    for (Ring& ring : rings) {
      for (Stream s : ring.slots) {
        if (s.handle == 0) continue;
        // DestroyStream waits for the stream's queued work first.
        absl::Status st = CallAtBoundary("stream destroy", [&] { return backend_->DestroyStream(s); });
        if (!st.ok()) {
          std::fprintf(stderr, "gpualloc: StreamPool could not destroy a stream of device %d: %s\n",
                       s.device, std::string(st.message()).c_str());
        }
      }
    }
  }
}

absl::StatusOr<Stream> StreamPool::Next(DeviceIndex device, StreamPriority priority) {
  return CallAtBoundary("stream pool: next stream", [&] { return NextImpl(device, priority); });
}

absl::StatusOr<Stream> StreamPool::NextImpl(DeviceIndex device, StreamPriority priority) {
  if (device < 0 || device >= devices_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream pool: device %d does not exist (the backend has %d)", device, devices_));
  }
  const int p = static_cast<int>(priority);
  if (p < 0 || p >= kStreamPriorityCount) {
    return absl::InvalidArgumentError(absl::StrFormat("stream pool: no priority %d", p));
  }
  MutexLock lock(mu_);
  Ring& ring = pools_[static_cast<std::size_t>(device)][static_cast<std::size_t>(p)];
  Stream& slot = ring.slots[ring.next];
  if (slot.handle == 0) {
    // Its first turn: created now (under the lock, so it is created once).
    absl::StatusOr<Stream> created = CallAtBoundary("stream create", [&]() -> absl::StatusOr<Stream> {
      GPUALLOC_ASSIGN_OR_RETURN(DeviceProperties props, backend_->GetDeviceProperties(device));
      return backend_->CreateStreamWithPriority(
          device, priority == StreamPriority::kHigh ? props.stream_priority_greatest
                                                    : props.stream_priority_least);
    });
    if (!created.ok()) {
      ++stats_.failed_creations;
      return created.status();  // the turn stays: the next call creates it
    }
    slot = *created;
    ++stats_.created[static_cast<std::size_t>(p)];
  }
  ring.next = (ring.next + 1) % ring.slots.size();
  ++stats_.handed_out[static_cast<std::size_t>(p)];
  return slot;
}

StreamPoolStats StreamPool::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace gpualloc
