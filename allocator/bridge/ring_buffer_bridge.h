// RingBufferBridge: message rings between the host and a device, like
// ringkernel's RingBufferBridge. Host code pushes fixed-size messages and
// flushes them to a device ring that kernels read; kernels write messages to
// a second device ring that the host drains. How the bytes cross is the
// TransferStrategy, chosen from the MemoryVisibility by default
// (memory_visibility.h); counters say how many messages went each way.
//
//   auto bridge = RingBufferBridge::Create(backend, pinned, device_memory, stream,
//                                          {.message_bytes = 64, .capacity = 1024},
//                                          DetectVisibility(*backend, 0, DetectPlatform()).value());
//   bridge->Push(&request);
//   bridge->FlushToDevice();                    // then launch kernels on `stream`
//   bridge->DrainToHost([](const void* reply) { ... });
//
// Layout of each device ring, for the kernels (DeviceRing): a 64-byte header
// whose first 8 bytes are the number of messages ever written to the ring
// (little-endian uint64), then `capacity` slots of `message_bytes`; message
// i lives in slot i % capacity.
//
// Contract:
//  - Stream order: everything the bridge does to a device ring is ordered
//    with the work on its stream. FlushToDevice publishes the pushed
//    messages before any work enqueued on the stream after it; DrainToHost
//    sees what the work enqueued before it wrote. Kernels that use the rings
//    run on that stream (or are ordered with it).
//  - Strategies: kSync copies and blocks; kAsync copies on the stream and
//    waits for an event only when the host needs the bytes (a drain, or a
//    push into a staging slot a copy still reads); kDmaPolling is kAsync
//    with the host polling the copy's completion every `poll_interval`
//    instead of blocking in the runtime; kUnified puts the device rings in
//    managed memory and copies nothing: the host writes and reads them in
//    place, after waiting for the stream's work that may touch them; so
//    with kUnified, enqueue work on the rings from the thread that flushes
//    and drains (or under the same lock), never while a flush or drain of
//    another thread runs. kUnified under kExplicitDma visibility is
//    InvalidArgument.
//  - Capacity: at most `capacity` messages wait for a flush (Push beyond it
//    is ResourceExhausted and changes nothing). A device ring overwrites its
//    oldest slot: a kernel must consume messages before `capacity` more are
//    flushed, and the host must drain before the device writes `capacity`
//    more (else DrainToHost reports DataLoss, delivers the newest `capacity`
//    and counts the lost ones).
//  - Errors come back as Status; a failed flush or drain keeps its messages
//    for the next call.
// Thread-safe: calls are serialised by one mutex (a push waits for a flush).
#ifndef GPUALLOC_ALLOCATOR_BRIDGE_RING_BUFFER_BRIDGE_H_
#define GPUALLOC_ALLOCATOR_BRIDGE_RING_BUFFER_BRIDGE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "allocator/bridge/memory_visibility.h"
#include "allocator/buffer/device_buffer.h"
#include "allocator/buffer/host_buffers.h"
#include "allocator/common/mutex.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/transfer/event_pool.h"

namespace gpualloc {

struct BridgeOptions {
  std::size_t message_bytes = 64;
  std::size_t capacity = 1024;  // messages per ring
  // Unset: DefaultStrategy(visibility).
  std::optional<TransferStrategy> strategy;
  std::chrono::microseconds poll_interval{20};  // kDmaPolling
};

struct BridgeStats {
  std::uint64_t host_to_device = 0;  // messages flushed to the device
  std::uint64_t device_to_host = 0;  // messages drained to the host
  std::uint64_t flushes = 0;
  std::uint64_t drains = 0;
  std::uint64_t lost = 0;            // device messages overwritten before a drain
  std::uint64_t polls = 0;           // completion polls (kDmaPolling)
};

// A device ring as kernels see it.
struct DeviceRing {
  void* header = nullptr;  // uint64 count of messages ever written
  void* slots = nullptr;
  std::size_t capacity = 0;
  std::size_t message_bytes = 0;
};

class RingBufferBridge {
 public:
  static constexpr std::size_t kHeaderBytes = 64;

  // InvalidArgument for null parts, a zero message size or capacity, sizes
  // that overflow, or kUnified under kExplicitDma; the allocators' errors.
  static absl::StatusOr<std::unique_ptr<RingBufferBridge>> Create(
      std::shared_ptr<Backend> backend, std::shared_ptr<PinnedHostAllocator> pinned,
      std::shared_ptr<MemoryResource> device_memory, Stream stream, BridgeOptions options,
      MemoryVisibility visibility);
  // Waits for the stream, then frees the rings (in the stream's order):
  // destroy the bridge before its stream.
  ~RingBufferBridge();
  RingBufferBridge(const RingBufferBridge&) = delete;
  RingBufferBridge& operator=(const RingBufferBridge&) = delete;

  // Queues one message (message_bytes from `message`) for the next flush.
  absl::Status Push(const void* message) ABSL_LOCKS_EXCLUDED(mu_);
  // Moves every queued message to the device ring; returns how many.
  absl::StatusOr<std::size_t> FlushToDevice() ABSL_LOCKS_EXCLUDED(mu_);
  // Delivers, oldest first, every message the device wrote since the last
  // drain; returns how many.
  absl::StatusOr<std::size_t> DrainToHost(const std::function<void(const void*)>& consume)
      ABSL_LOCKS_EXCLUDED(mu_);

  DeviceRing to_device() const { return to_device_; }
  DeviceRing to_host() const { return to_host_; }
  TransferStrategy strategy() const { return strategy_; }
  MemoryVisibility visibility() const { return visibility_; }
  Stream stream() const { return stream_; }
  BridgeStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  RingBufferBridge(std::shared_ptr<Backend> backend, Stream stream, BridgeOptions options,
                   TransferStrategy strategy, MemoryVisibility visibility);
  // Host-to-device bytes of [offset, offset+n) of a ring, by the strategy.
  absl::Status CopyToDevice(void* device, const void* host, std::size_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CopyToHost(void* host, const void* device, std::size_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Blocks (or polls) until the copies enqueued so far on the stream are done.
  absl::Status WaitForCopies() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kDmaPolling's wait: queries `e` every poll_interval until it completes.
  absl::Status PollUntilDone(Event e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  char* Slot(const DeviceRing& ring, std::uint64_t i) const;

  const std::shared_ptr<Backend> backend_;
  const Stream stream_;
  const BridgeOptions options_;
  const TransferStrategy strategy_;
  const MemoryVisibility visibility_;
  EventPool events_;
  // The rings' memory: device buffers, or managed memory for kUnified.
  DeviceBuffer to_device_memory_;
  DeviceBuffer to_host_memory_;
  UnifiedBuffer to_device_managed_;
  UnifiedBuffer to_host_managed_;
  DeviceRing to_device_;
  DeviceRing to_host_;
  // Pinned staging for the copies (unused by kUnified): a header and the
  // slots, the same layout as a ring.
  PinnedBuffer staging_out_;
  PinnedBuffer staging_in_;

  mutable Mutex mu_;
  std::vector<unsigned char> pending_ ABSL_GUARDED_BY(mu_);  // pushed, not flushed
  std::uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;   // messages flushed so far
  std::uint64_t drained_ ABSL_GUARDED_BY(mu_) = 0;   // device messages consumed so far
  bool copies_in_flight_ ABSL_GUARDED_BY(mu_) = false;  // staging may still be in use
  BridgeStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BRIDGE_RING_BUFFER_BRIDGE_H_
