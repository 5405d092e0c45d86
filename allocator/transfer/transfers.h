// Transfers: one asynchronous API for copies and fills between host and
// device memory. Every call enqueues work on a stream and returns a
// Completion; nothing synchronises the device behind the caller's back. The
// synchronous forms are the asynchronous call followed by Wait().
//
// Bad input is an error before anything is enqueued, never a corruption:
// ranges past a buffer's end (offset + size checked for overflow), a freed
// or empty buffer, a stream of another device than the buffer, copies
// between devices (except PeerToPeer, whose stream may be either device's).
// Thread-safe: calls may come from any thread (the backend serialises per
// stream).
#ifndef GPUALLOC_ALLOCATOR_TRANSFER_TRANSFERS_H_
#define GPUALLOC_ALLOCATOR_TRANSFER_TRANSFERS_H_

#include <memory>

#include "allocator/backend/backend.h"
#include "allocator/buffer/device_buffer.h"
#include "allocator/buffer/shared_memory.h"

namespace gpualloc {

// A range of device memory: what a transfer reads or writes.
struct DeviceSpan {
  void* data = nullptr;
  std::size_t size = 0;
  DeviceIndex device = 0;
};
inline DeviceSpan Span(const DeviceBuffer& b) { return {b.data(), b.size(), b.device()}; }
inline DeviceSpan Span(const SharedMemory& m) { return {m.data(), m.size(), m.device()}; }

// The completion of work enqueued on a stream. Copyable; cheap.
class Completion {
 public:
  // A completion for everything enqueued on `stream` so far.
  static absl::StatusOr<Completion> Record(std::shared_ptr<Backend> backend, Stream stream);

  // Blocks the host until the work is done.
  absl::Status Wait() const;
  // true when done; never blocks.
  absl::StatusOr<bool> Done() const;
  // Makes later work on `stream` wait for this work, on the device.
  absl::Status Then(Stream stream) const;
  Stream stream() const { return state_->stream; }

 private:
  friend class Transfers;
  struct State {
    State(std::shared_ptr<Backend> b, Event e, Stream s)
        : backend(std::move(b)), event(e), stream(s) {}
    State(const State&) = delete;  // owns the event: destroyed exactly once
    State& operator=(const State&) = delete;
    ~State();
    std::shared_ptr<Backend> backend;
    Event event;
    Stream stream;
  };
  std::shared_ptr<State> state_;
};

class Transfers {
 public:
  explicit Transfers(std::shared_ptr<Backend> backend) : backend_(std::move(backend)) {}

  absl::StatusOr<Completion> ToDevice(DeviceSpan dst, std::size_t dst_offset, const void* src,
                                      std::size_t bytes, Stream stream) const;
  absl::StatusOr<Completion> ToHost(void* dst, DeviceSpan src, std::size_t src_offset,
                                    std::size_t bytes, Stream stream) const;
  absl::StatusOr<Completion> DeviceToDevice(DeviceSpan dst, std::size_t dst_offset, DeviceSpan src,
                                            std::size_t src_offset, std::size_t bytes,
                                            Stream stream) const;
  absl::StatusOr<Completion> Fill(DeviceSpan dst, std::size_t offset, int value, std::size_t bytes,
                                  Stream stream) const;
  // A copy between memory of two devices (cudaMemcpyPeerAsync), in the order
  // of `stream`, a stream of either device. The runtime stages it through the
  // host where the devices have no link; peer access is needed only by
  // kernels. A free of either buffer must come after it: free it on
  // `stream`, or RecordStream(stream) on its allocator (a caching allocator
  // accepts a peer device's stream).
  absl::StatusOr<Completion> PeerToPeer(DeviceSpan dst, std::size_t dst_offset, DeviceSpan src,
                                        std::size_t src_offset, std::size_t bytes,
                                        Stream stream) const;

  absl::Status ToDeviceSync(DeviceSpan dst, std::size_t dst_offset, const void* src,
                            std::size_t bytes, Stream stream) const;
  absl::Status ToHostSync(void* dst, DeviceSpan src, std::size_t src_offset, std::size_t bytes,
                          Stream stream) const;

  const std::shared_ptr<Backend>& backend() const { return backend_; }

 private:
  const std::shared_ptr<Backend> backend_;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_TRANSFER_TRANSFERS_H_
