#include "allocator/bridge/ring_buffer_bridge.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::StatusOr<std::unique_ptr<RingBufferBridge>> RingBufferBridge::Create(
    std::shared_ptr<Backend> backend, std::shared_ptr<PinnedHostAllocator> pinned,
    std::shared_ptr<MemoryResource> device_memory, Stream stream, BridgeOptions options,
    MemoryVisibility visibility) {
  if (backend == nullptr || pinned == nullptr || device_memory == nullptr) {
    return absl::InvalidArgumentError("ring buffer bridge: null backend, pinned allocator or resource");
  }
  if (options.message_bytes == 0 || options.capacity == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring buffer bridge: %d messages of %d bytes is no ring", options.capacity,
        options.message_bytes));
  }
  const std::optional<std::size_t> slots = CheckedMul(options.capacity, options.message_bytes);
  const std::optional<std::size_t> ring_bytes =
      slots ? CheckedAdd(*slots, kHeaderBytes) : std::nullopt;
  if (!ring_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring buffer bridge: %d messages of %d bytes overflow the size arithmetic",
        options.capacity, options.message_bytes));
  }
  if (stream.device != device_memory->device()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring buffer bridge: a stream of device %d for memory of device %d", stream.device,
        device_memory->device()));
  }
  const TransferStrategy strategy = options.strategy.value_or(DefaultStrategy(visibility));
  if (!StrategyWorksUnder(strategy, visibility)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ring buffer bridge: the %s strategy needs managed memory, and the visibility is %s",
        TransferStrategyName(strategy), MemoryVisibilityName(visibility)));
  }
  std::unique_ptr<RingBufferBridge> bridge;
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("ring buffer bridge: create", [&] {
    bridge.reset(new RingBufferBridge(backend, stream, options, strategy, visibility));
    MutexLock lock(bridge->mu_);
    bridge->pending_.reserve(*slots);  // Push never allocates
    return absl::OkStatus();
  }));
  RingBufferBridge& b = *bridge;
  const DeviceIndex device = stream.device;
  auto ring = [&](void* base) {
    return DeviceRing{base, static_cast<char*>(base) + kHeaderBytes, options.capacity,
                      options.message_bytes};
  };
  const std::vector<char> zeros(kHeaderBytes, 0);
  if (strategy == TransferStrategy::kUnified) {
    GPUALLOC_ASSIGN_OR_RETURN(b.to_device_managed_, UnifiedBuffer::Create(backend, *ring_bytes, device));
    GPUALLOC_ASSIGN_OR_RETURN(b.to_host_managed_, UnifiedBuffer::Create(backend, *ring_bytes, device));
    GPUALLOC_RETURN_IF_ERROR(b.to_device_managed_.HostWrite(0, zeros.data(), kHeaderBytes));
    GPUALLOC_RETURN_IF_ERROR(b.to_host_managed_.HostWrite(0, zeros.data(), kHeaderBytes));
    b.to_device_ = ring(b.to_device_managed_.data());
    b.to_host_ = ring(b.to_host_managed_.data());
  } else {
    GPUALLOC_ASSIGN_OR_RETURN(b.to_device_memory_,
                              DeviceBuffer::Create(device_memory, *ring_bytes, stream));
    GPUALLOC_ASSIGN_OR_RETURN(b.to_host_memory_,
                              DeviceBuffer::Create(device_memory, *ring_bytes, stream));
    for (void* header : {b.to_device_memory_.data(), b.to_host_memory_.data()}) {
      GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memset async", [&] {
        return backend->MemsetAsync(header, 0, kHeaderBytes, stream);
      }));
    }
    b.to_device_ = ring(b.to_device_memory_.data());
    b.to_host_ = ring(b.to_host_memory_.data());
    GPUALLOC_ASSIGN_OR_RETURN(b.staging_out_, PinnedBuffer::Create(pinned, *ring_bytes, device));
    GPUALLOC_ASSIGN_OR_RETURN(b.staging_in_, PinnedBuffer::Create(pinned, *ring_bytes, device));
  }
  return bridge;
}

RingBufferBridge::RingBufferBridge(std::shared_ptr<Backend> backend, Stream stream,
                                   BridgeOptions options, TransferStrategy strategy,
                                   MemoryVisibility visibility)
    : backend_(backend),
      stream_(stream),
      options_(options),
      strategy_(strategy),
      visibility_(visibility),
      events_(backend, stream.device) {}

RingBufferBridge::~RingBufferBridge() {
  // Nothing may still copy from staging or run on the rings when they go.
  CallAtBoundary("stream synchronize", [&] { return backend_->SynchronizeStream(stream_); })
      .IgnoreError();
}

char* RingBufferBridge::Slot(const DeviceRing& ring, std::uint64_t i) const {
  return static_cast<char*>(ring.slots) + (i % ring.capacity) * ring.message_bytes;
}

absl::Status RingBufferBridge::Push(const void* message) {
  if (message == nullptr) return absl::InvalidArgumentError("ring buffer bridge: null message");
  MutexLock lock(mu_);
  if (pending_.size() / options_.message_bytes >= options_.capacity) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "ring buffer bridge: %d messages wait for a flush already (the ring's capacity)",
        options_.capacity));
  }
  const auto* bytes = static_cast<const unsigned char*>(message);
  pending_.insert(pending_.end(), bytes, bytes + options_.message_bytes);  // capacity reserved
  return absl::OkStatus();
}

absl::Status RingBufferBridge::CopyToDevice(void* device, const void* host, std::size_t n) {
  if (strategy_ == TransferStrategy::kSync) {
    return CallAtBoundary("memcpy", [&] {
      return backend_->Memcpy(device, host, n, CopyKind::kHostToDevice);
    });
  }
  copies_in_flight_ = true;  // even if the call fails: it may have been enqueued
  return CallAtBoundary("memcpy async", [&] {
    return backend_->MemcpyAsync(device, host, n, CopyKind::kHostToDevice, stream_);
  });
}

absl::Status RingBufferBridge::CopyToHost(void* host, const void* device, std::size_t n) {
  if (strategy_ == TransferStrategy::kSync) {
    return CallAtBoundary("memcpy", [&] {
      return backend_->Memcpy(host, device, n, CopyKind::kDeviceToHost);
    });
  }
  copies_in_flight_ = true;
  return CallAtBoundary("memcpy async", [&] {
    return backend_->MemcpyAsync(host, device, n, CopyKind::kDeviceToHost, stream_);
  });
}

absl::Status RingBufferBridge::WaitForCopies() {
  if (!copies_in_flight_) return absl::OkStatus();
  GPUALLOC_ASSIGN_OR_RETURN(Event e, events_.Acquire());
  absl::Status st = CallAtBoundary("event record", [&] { return backend_->RecordEvent(e, stream_); });
  if (st.ok()) {
    st = strategy_ == TransferStrategy::kDmaPolling
             ? PollUntilDone(e)
             : CallAtBoundary("event synchronize", [&] { return backend_->SynchronizeEvent(e); });
  }
  events_.Recycle(e);
  // A failed wait leaves the copies in flight: the next one waits again.
  if (st.ok()) copies_in_flight_ = false;
  return st;
}

absl::Status RingBufferBridge::PollUntilDone(Event e) {
  for (;;) {
    absl::StatusOr<bool> done = CallAtBoundary("event query", [&] { return backend_->QueryEvent(e); });
    ++stats_.polls;
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    std::this_thread::sleep_for(options_.poll_interval);
  }
}

absl::StatusOr<std::size_t> RingBufferBridge::FlushToDevice() {
  MutexLock lock(mu_);
  const std::size_t n = pending_.size() / options_.message_bytes;
  if (n == 0) return std::size_t{0};
  const std::size_t mb = options_.message_bytes;
  const std::uint64_t count = written_ + n;
  // Kernels queued on the stream may still read the slots about to be
  // overwritten: a blocking copy or a host write comes after them.
  if (strategy_ == TransferStrategy::kSync || strategy_ == TransferStrategy::kUnified) {
    GPUALLOC_RETURN_IF_ERROR(CallAtBoundary(
        "stream synchronize", [&] { return backend_->SynchronizeStream(stream_); }));
  }
  if (strategy_ == TransferStrategy::kUnified) {
    UnifiedBuffer& ring = to_device_managed_;
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t at = kHeaderBytes + ((written_ + k) % options_.capacity) * mb;
      GPUALLOC_RETURN_IF_ERROR(ring.HostWrite(at, pending_.data() + k * mb, mb));
    }
    GPUALLOC_RETURN_IF_ERROR(ring.HostWrite(0, &count, sizeof(count)));  // published last
  } else {
    // Staging is rewritten: the copies that read it last must be done.
    GPUALLOC_RETURN_IF_ERROR(WaitForCopies());
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t at = kHeaderBytes + ((written_ + k) % options_.capacity) * mb;
      GPUALLOC_RETURN_IF_ERROR(staging_out_.HostWrite(at, pending_.data() + k * mb, mb));
    }
    GPUALLOC_RETURN_IF_ERROR(staging_out_.HostWrite(0, &count, sizeof(count)));
    // The slots, in at most two runs (the ring wraps), then the count: the
    // stream runs them in order, so kernels never see a count before its
    // messages.
    const std::size_t first = written_ % options_.capacity;
    const std::size_t run = std::min(n, options_.capacity - first);
    auto* out = static_cast<char*>(staging_out_.data());
    GPUALLOC_RETURN_IF_ERROR(
        CopyToDevice(Slot(to_device_, first), out + kHeaderBytes + first * mb, run * mb));
    if (run < n) {
      GPUALLOC_RETURN_IF_ERROR(
          CopyToDevice(Slot(to_device_, 0), out + kHeaderBytes, (n - run) * mb));
    }
    GPUALLOC_RETURN_IF_ERROR(CopyToDevice(to_device_.header, out, sizeof(count)));
  }
  written_ = count;
  pending_.clear();
  stats_.host_to_device += n;
  ++stats_.flushes;
  return n;
}

absl::StatusOr<std::size_t> RingBufferBridge::DrainToHost(
    const std::function<void(const void*)>& consume) {
  MutexLock lock(mu_);
  const std::size_t mb = options_.message_bytes;
  const bool unified = strategy_ == TransferStrategy::kUnified;
  // The host reads after the work queued so far: blocking reads wait for the
  // stream; copies are queued behind it and waited for.
  if (strategy_ == TransferStrategy::kSync || unified) {
    GPUALLOC_RETURN_IF_ERROR(CallAtBoundary(
        "stream synchronize", [&] { return backend_->SynchronizeStream(stream_); }));
  }
  std::uint64_t produced = 0;
  if (unified) {
    GPUALLOC_RETURN_IF_ERROR(to_host_managed_.HostRead(0, &produced, sizeof(produced)));
  } else {
    GPUALLOC_RETURN_IF_ERROR(WaitForCopies());  // staging_in_ is rewritten
    GPUALLOC_RETURN_IF_ERROR(CopyToHost(staging_in_.data(), to_host_.header, sizeof(produced)));
    GPUALLOC_RETURN_IF_ERROR(WaitForCopies());
    GPUALLOC_RETURN_IF_ERROR(staging_in_.HostRead(0, &produced, sizeof(produced)));
  }
  if (produced < drained_) {
    return absl::DataLossError(absl::StrFormat(
        "ring buffer bridge: the device ring's count went back from %d to %d", drained_, produced));
  }
  std::uint64_t first = drained_;
  std::uint64_t lost = 0;
  if (produced - first > options_.capacity) {
    lost = produced - options_.capacity - first;
    first = produced - options_.capacity;
  }
  const std::size_t n = static_cast<std::size_t>(produced - first);
  std::vector<unsigned char> message(mb);
  if (!unified && n > 0) {
    const std::size_t at = first % options_.capacity;
    const std::size_t run = std::min(n, options_.capacity - at);
    auto* in = static_cast<char*>(staging_in_.data());
    GPUALLOC_RETURN_IF_ERROR(CopyToHost(in + kHeaderBytes + at * mb, Slot(to_host_, at), run * mb));
    if (run < n) {
      GPUALLOC_RETURN_IF_ERROR(CopyToHost(in + kHeaderBytes, Slot(to_host_, 0), (n - run) * mb));
    }
    GPUALLOC_RETURN_IF_ERROR(WaitForCopies());
  }
  stats_.lost += lost;
  drained_ = first;
  ++stats_.drains;
  for (std::uint64_t i = first; i < produced; ++i) {
    const std::size_t at = kHeaderBytes + (i % options_.capacity) * mb;
    GPUALLOC_RETURN_IF_ERROR(unified ? to_host_managed_.HostRead(at, message.data(), mb)
                                     : staging_in_.HostRead(at, message.data(), mb));
    GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("ring buffer bridge: the consumer", [&] {
      consume(message.data());
      return absl::OkStatus();
    }));
    drained_ = i + 1;  // a consumer that throws gets the rest next time
    ++stats_.device_to_host;
  }
  if (lost > 0) {
    return absl::DataLossError(absl::StrFormat(
        "ring buffer bridge: %d device messages were overwritten before this drain; the newest "
        "%d were delivered",
        lost, n));
  }
  return n;
}

BridgeStats RingBufferBridge::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace gpualloc
