// StagingBufferPool: a bounded pool of pinned staging buffers for copies
// between device memory and the host (above all device-to-host readback),
// with the hit rate it achieves. Like ringkernel's StagingBufferPool (at most
// 16 buffers), built on PinnedHostAllocator.
//
//   auto pool = StagingBufferPool::Create(pinned, /*owner=*/0);
//   absl::StatusOr<StagingBuffer> staging = (*pool)->Acquire(bytes);
//   absl::StatusOr<Completion> copied = staging->ReadBack(Span(device_buf), 0, bytes, stream);
//   copied->Wait();
//   staging->HostRead(0, out, bytes);
//   // back to the pool at scope exit
//
// Contract:
//  - Acquire(bytes) hands out a buffer of at least `bytes`: an idle one (a
//    hit: the smallest that fits) or a new one from the pinned allocator (a
//    miss). New buffers have a power-of-two capacity of at least
//    `min_buffer_bytes`, so requests of nearby sizes share buffers.
//  - Stream order: device work on a buffer is named with RecordStream (the
//    ReadBack and Upload helpers do it). When the buffer comes back, an
//    event is recorded on each such stream, and the pool hands it out again
//    only once every one of those events has completed: a buffer whose copy
//    is still running is passed over (counted as a busy skip), never
//    reused. If an event cannot be recorded, the pool waits for the stream
//    on the host instead (counted as a host wait). A buffer leaves the pool
//    (eviction, Trim, destruction) only after its events have completed:
//    the pinned allocator never hears of the pool's streams, so a stream
//    may be destroyed once its work is done, with its buffers still pooled.
//    A buffer whose work cannot be shown done (a wait fails: the device is
//    failing) is retained, out of use, and released by a later Trim.
//  - Bounded: at most `max_buffers` idle buffers. A buffer that comes back
//    to a full pool evicts the least recently returned idle one, which goes
//    back to the pinned allocator. Buffers in use are not limited: Acquire
//    never blocks.
//  - If the pinned allocator is out of memory, Acquire gives back every idle
//    buffer and tries once more before it reports the error.
//  - Errors: InvalidArgument for 0 bytes or a stream of another device, ResourceExhausted for a size whose
//    capacity overflows, and the pinned allocator's or backend's error
//    otherwise. Whatever a backend or an allocation throws is returned as a
//    Status; a failed call changes nothing.
// Thread-safe: a pool may be shared by any number of threads. A
// StagingBuffer belongs to one thread at a time. A buffer keeps its pool
// alive.
#ifndef GPUALLOC_ALLOCATOR_POOLS_STAGING_BUFFER_POOL_H_
#define GPUALLOC_ALLOCATOR_POOLS_STAGING_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "allocator/buffer/host_buffers.h"
#include "allocator/common/mutex.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/transfer/event_pool.h"
#include "allocator/transfer/transfers.h"

namespace gpualloc {

struct StagingPoolOptions {
  // Idle buffers kept for reuse (0: none; every buffer goes straight back).
  std::size_t max_buffers = 16;
  // The smallest capacity; a power of two.
  std::size_t min_buffer_bytes = 4096;

  absl::Status Validate() const;
};

struct StagingPoolStats {
  std::uint64_t acquires = 0;    // successful Acquire calls
  std::uint64_t hits = 0;        // served by an idle buffer
  std::uint64_t misses = 0;      // served by a new buffer
  std::uint64_t busy_skips = 0;  // idle buffers passed over: device work on them not done
  std::uint64_t releases = 0;    // buffers given back to the pinned allocator
  std::uint64_t host_waits = 0;  // returns whose events could not be recorded
  // Buffers whose work could not be shown done (the device failing): kept out
  // of use, never reused, released by a later Trim once it can be.
  std::size_t retained_buffers = 0;
  std::size_t retained_bytes = 0;
  std::size_t idle_buffers = 0;
  std::size_t idle_bytes = 0;
  std::size_t in_use = 0;        // buffers handed out and not yet back

  // hits / acquires (0 before the first acquire).
  double hit_rate() const {
    return acquires == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(acquires);
  }
};

class StagingBufferPool;

// One staging buffer, handed out by a StagingBufferPool. Move-only; back to
// the pool on Reset() or destruction (noexcept; a buffer the pool cannot
// keep goes back to the pinned allocator, and a failure there is reported,
// never lost silently).
class StagingBuffer {
 public:
  StagingBuffer() = default;
  StagingBuffer(StagingBuffer&& other) noexcept;
  StagingBuffer& operator=(StagingBuffer&& other) noexcept;
  ~StagingBuffer() { Reset().IgnoreError(); }

  void* data() const { return buffer_.data(); }
  std::size_t size() const { return size_; }                  // as acquired
  std::size_t capacity() const { return buffer_.size(); }     // of the pinned block
  DeviceIndex owner() const { return buffer_.owner(); }
  bool empty() const { return buffer_.data() == nullptr; }

  // Device work on `stream` uses the buffer (an async copy into or out of
  // it): the pool will not reuse it before that work completes.
  // InvalidArgument for a stream of another device than owner().
  absl::Status RecordStream(Stream stream);
  // Enqueues a copy of `bytes` of `src` (from `src_offset`) into the buffer
  // at `offset` on `stream`, and records the stream. OutOfRange if the range
  // passes size(); InvalidArgument if the source range passes its buffer.
  absl::StatusOr<Completion> ReadBack(DeviceSpan src, std::size_t src_offset, std::size_t bytes,
                                      Stream stream, std::size_t offset = 0);
  // Enqueues a copy of the buffer's [offset, offset+bytes) into `dst` (from
  // `dst_offset`) on `stream`, and records the stream.
  absl::StatusOr<Completion> Upload(DeviceSpan dst, std::size_t dst_offset, std::size_t bytes,
                                    Stream stream, std::size_t offset = 0);
  // Host access to [offset, offset+n) of the first size() bytes, announced
  // to the backend like PinnedBuffer's. Wait for the copies first.
  absl::Status HostWrite(std::size_t offset, const void* src, std::size_t n) const;
  absl::Status HostRead(std::size_t offset, void* dst, std::size_t n) const;

  // Returns the buffer to its pool now; the buffer becomes empty.
  absl::Status Reset() noexcept;

 private:
  friend class StagingBufferPool;
  StagingBuffer(std::shared_ptr<StagingBufferPool> pool, PinnedBuffer buffer, std::size_t size)
      : pool_(std::move(pool)), buffer_(std::move(buffer)), size_(size) {}
  absl::Status CheckRange(const char* what, std::size_t offset, std::size_t n) const;

  std::shared_ptr<StagingBufferPool> pool_;
  PinnedBuffer buffer_;
  std::size_t size_ = 0;
  std::vector<Stream> streams_;  // named by RecordStream since it was acquired
};

class StagingBufferPool : public std::enable_shared_from_this<StagingBufferPool> {
 public:
  // Buffers owned by device `owner`, from `pinned`. InvalidArgument for a
  // null allocator or bad options.
  static absl::StatusOr<std::shared_ptr<StagingBufferPool>> Create(
      std::shared_ptr<PinnedHostAllocator> pinned, DeviceIndex owner,
      StagingPoolOptions options = {});
  StagingBufferPool(const StagingBufferPool&) = delete;
  StagingBufferPool& operator=(const StagingBufferPool&) = delete;
  ~StagingBufferPool();

  absl::StatusOr<StagingBuffer> Acquire(std::size_t bytes);
  // Gives every idle buffer back to the pinned allocator.
  absl::Status Trim();
  StagingPoolStats stats() const;
  DeviceIndex owner() const { return owner_; }

 private:
  friend class StagingBuffer;
  // An event recorded on a stream that used a buffer, when it came back.
  struct Pending {
    Event event;
    Stream stream;
  };
  struct Idle {
    PinnedBuffer buffer;
    std::vector<Pending> pending;     // one per stream that used it
    std::vector<Stream> unsynced;     // streams to wait for on the host (no event recorded)
    std::uint64_t returned_at = 0;    // for least-recently-returned eviction
  };
  StagingBufferPool(std::shared_ptr<PinnedHostAllocator> pinned, DeviceIndex owner,
                    StagingPoolOptions options);

  absl::StatusOr<StagingBuffer> AcquireImpl(std::size_t bytes);
  // Takes the smallest idle buffer of at least `bytes` whose work is done.
  std::optional<PinnedBuffer> TakeIdle(std::size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether every event of `idle` has completed (a failed query: not yet).
  bool WorkDone(const Idle& idle) const;
  void RecycleEvents(Idle& idle) noexcept;
  // A buffer back from use on `streams`. Never throws.
  absl::Status Return(PinnedBuffer buffer, const std::vector<Stream>& streams) noexcept
      ABSL_LOCKS_EXCLUDED(mu_);
  // Waits on the host until the work on `idle` is done.
  absl::Status WaitFor(const Idle& idle) noexcept;
  // Gives `idle` back to the pinned allocator once its work is done, or
  // retains it if that cannot be shown. Never throws.
  absl::Status Release(Idle idle) noexcept ABSL_LOCKS_EXCLUDED(mu_);
  void Retain(Idle idle) noexcept ABSL_LOCKS_EXCLUDED(mu_);
  // The last resort (destruction, no memory to retain it): frees `idle`
  // through the pinned allocator with its streams recorded there.
  void GiveUp(Idle idle) noexcept;
  const std::shared_ptr<Backend>& backend() const { return transfers_.backend(); }

  const std::shared_ptr<PinnedHostAllocator> pinned_;
  const DeviceIndex owner_;
  const StagingPoolOptions options_;
  const Transfers transfers_;  // over the pinned allocator's backend
  mutable EventPool events_;  // the events recorded when buffers come back
  mutable Mutex mu_;
  std::vector<Idle> idle_ ABSL_GUARDED_BY(mu_);  // capacity max_buffers: never reallocates
  // Buffers whose work could not be shown done (a failing device): out of
  // use, retried by Trim.
  std::vector<Idle> retained_ ABSL_GUARDED_BY(mu_);
  std::uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  StagingPoolStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POOLS_STAGING_BUFFER_POOL_H_
