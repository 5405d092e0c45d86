#include "allocator/pools/staging_buffer_pool.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/buffer/release_report.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::Status StagingPoolOptions::Validate() const {
  if (min_buffer_bytes == 0 || !std::has_single_bit(min_buffer_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "staging pool: min_buffer_bytes (%d) must be a power of two", min_buffer_bytes));
  }
  return absl::OkStatus();
}

// --- StagingBuffer ---------------------------------------------------------------------

StagingBuffer::StagingBuffer(StagingBuffer&& other) noexcept
    : pool_(std::move(other.pool_)),
      buffer_(std::move(other.buffer_)),
      size_(std::exchange(other.size_, 0)),
      streams_(std::move(other.streams_)) {}

StagingBuffer& StagingBuffer::operator=(StagingBuffer&& other) noexcept {
  if (this != &other) {
    Reset().IgnoreError();
    pool_ = std::move(other.pool_);
    buffer_ = std::move(other.buffer_);
    size_ = std::exchange(other.size_, 0);
    streams_ = std::move(other.streams_);
  }
  return *this;
}

absl::Status StagingBuffer::RecordStream(Stream stream) {
  if (empty()) return absl::FailedPreconditionError("StagingBuffer: empty buffer");
  if (stream.device != owner()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "StagingBuffer: a stream of device %d used with a buffer of device %d", stream.device,
        owner()));
  }
  for (Stream s : streams_) {
    if (s == stream) return absl::OkStatus();
  }
  return CallAtBoundary("StagingBuffer: record stream", [&] {
    streams_.push_back(stream);
    return absl::OkStatus();
  });
}

absl::Status StagingBuffer::CheckRange(const char* what, std::size_t offset, std::size_t n) const {
  if (empty()) return absl::FailedPreconditionError(absl::StrCat(what, ": empty buffer"));
  if (offset > size_ || n > size_ - offset) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s: [%d, +%d) is outside the staging buffer's %d bytes", what, offset, n, size_));
  }
  return absl::OkStatus();
}

absl::StatusOr<Completion> StagingBuffer::ReadBack(DeviceSpan src, std::size_t src_offset,
                                                   std::size_t bytes, Stream stream,
                                                   std::size_t offset) {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("StagingBuffer::ReadBack", offset, bytes));
  // Recorded first: if the copy is enqueued, the pool knows of it.
  GPUALLOC_RETURN_IF_ERROR(RecordStream(stream));
  return pool_->transfers_.ToHost(static_cast<char*>(data()) + offset, src, src_offset, bytes,
                                  stream);
}

absl::StatusOr<Completion> StagingBuffer::Upload(DeviceSpan dst, std::size_t dst_offset,
                                                 std::size_t bytes, Stream stream,
                                                 std::size_t offset) {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("StagingBuffer::Upload", offset, bytes));
  GPUALLOC_RETURN_IF_ERROR(RecordStream(stream));
  return pool_->transfers_.ToDevice(dst, dst_offset, static_cast<char*>(data()) + offset, bytes,
                                    stream);
}

absl::Status StagingBuffer::HostWrite(std::size_t offset, const void* src, std::size_t n) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("StagingBuffer::HostWrite", offset, n));
  return buffer_.HostWrite(offset, src, n);
}

absl::Status StagingBuffer::HostRead(std::size_t offset, void* dst, std::size_t n) const {
  GPUALLOC_RETURN_IF_ERROR(CheckRange("StagingBuffer::HostRead", offset, n));
  return buffer_.HostRead(offset, dst, n);
}

absl::Status StagingBuffer::Reset() noexcept {
  if (empty()) return absl::OkStatus();
  std::shared_ptr<StagingBufferPool> pool = std::move(pool_);
  absl::Status st = pool->Return(std::move(buffer_), streams_);
  streams_.clear();
  size_ = 0;
  return st;
}

// --- StagingBufferPool -----------------------------------------------------------------

absl::StatusOr<std::shared_ptr<StagingBufferPool>> StagingBufferPool::Create(
    std::shared_ptr<PinnedHostAllocator> pinned, DeviceIndex owner, StagingPoolOptions options) {
  if (pinned == nullptr) return absl::InvalidArgumentError("staging pool: null pinned allocator");
  GPUALLOC_RETURN_IF_ERROR(options.Validate());
  return CallAtBoundary("staging pool: create", [&]() -> absl::StatusOr<std::shared_ptr<StagingBufferPool>> {
    std::shared_ptr<StagingBufferPool> pool(
        new StagingBufferPool(std::move(pinned), owner, options));
    MutexLock lock(pool->mu_);
    pool->idle_.reserve(options.max_buffers);  // so Return never allocates
    return pool;
  });
}

StagingBufferPool::StagingBufferPool(std::shared_ptr<PinnedHostAllocator> pinned,
                                     DeviceIndex owner, StagingPoolOptions options)
    : pinned_(pinned),
      owner_(owner),
      options_(options),
      // The pinned allocator's backend, kept alive by the allocator itself.
      transfers_(std::shared_ptr<Backend>(pinned, &pinned->backend())),
      events_(transfers_.backend(), owner) {}

StagingBufferPool::~StagingBufferPool() {
  Trim().IgnoreError();
  std::vector<Idle> retained;
  {
    MutexLock lock(mu_);
    retained.swap(retained_);
  }
  for (Idle& i : retained) GiveUp(std::move(i));
}

absl::StatusOr<StagingBuffer> StagingBufferPool::Acquire(std::size_t bytes) {
  return CallAtBoundary("staging pool: acquire", [&] { return AcquireImpl(bytes); });
}

absl::StatusOr<StagingBuffer> StagingBufferPool::AcquireImpl(std::size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("staging pool: zero-byte staging buffer");
  if (bytes > (std::numeric_limits<std::size_t>::max() >> 1) + 1) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("staging pool: a staging buffer of %d bytes cannot be rounded up", bytes));
  }
  const std::size_t capacity = std::max(options_.min_buffer_bytes, std::bit_ceil(bytes));
  {
    MutexLock lock(mu_);
    if (std::optional<PinnedBuffer> idle = TakeIdle(bytes)) {
      ++stats_.acquires;
      ++stats_.hits;
      ++stats_.in_use;
      return StagingBuffer(shared_from_this(), std::move(*idle), bytes);
    }
  }
  absl::StatusOr<PinnedBuffer> fresh = PinnedBuffer::Create(pinned_, capacity, owner_);
  if (absl::IsResourceExhausted(fresh.status())) {
    // Our idle buffers may be what the pinned allocator lacks.
    GPUALLOC_RETURN_IF_ERROR(Trim());
    fresh = PinnedBuffer::Create(pinned_, capacity, owner_);
  }
  if (!fresh.ok()) return fresh.status();
  MutexLock lock(mu_);
  ++stats_.acquires;
  ++stats_.misses;
  ++stats_.in_use;
  return StagingBuffer(shared_from_this(), std::move(*fresh), bytes);
}

std::optional<PinnedBuffer> StagingBufferPool::TakeIdle(std::size_t bytes) {
  Idle* best = nullptr;
  for (Idle& idle : idle_) {
    if (idle.buffer.size() < bytes) continue;
    if (best != nullptr && best->buffer.size() <= idle.buffer.size()) continue;
    const bool done = WorkDone(idle);
    if (!done) {
      ++stats_.busy_skips;
      continue;
    }
    best = &idle;
  }
  if (best == nullptr) return std::nullopt;
  RecycleEvents(*best);
  PinnedBuffer out = std::move(best->buffer);
  stats_.idle_bytes -= out.size();
  *best = std::move(idle_.back());  // order does not matter: eviction goes by returned_at
  idle_.pop_back();
  stats_.idle_buffers = idle_.size();
  return out;
}

bool StagingBufferPool::WorkDone(const Idle& idle) const {
  for (const Pending& p : idle.pending) {
    absl::StatusOr<bool> done =
        CallAtBoundary("event query", [&] { return events_.backend().QueryEvent(p.event); });
    if (!done.ok() || !*done) return false;
  }
  return true;
}

void StagingBufferPool::RecycleEvents(Idle& idle) noexcept {
  for (const Pending& p : idle.pending) events_.Recycle(p.event);
  idle.pending.clear();
}

absl::Status StagingBufferPool::Return(PinnedBuffer buffer,
                                       const std::vector<Stream>& streams) noexcept {
  Idle back{std::move(buffer), {}, {}, 0};
  absl::Status recorded = CallAtBoundary("staging pool: record the buffer's streams", [&] {
    back.pending.reserve(streams.size());
    for (Stream s : streams) {
      GPUALLOC_ASSIGN_OR_RETURN(Event e, events_.Acquire());
      absl::Status st = CallAtBoundary("event record", [&] { return backend()->RecordEvent(e, s); });
      if (!st.ok()) {
        events_.Recycle(e);
        return st;
      }
      back.pending.push_back(Pending{e, s});  // room reserved
    }
    return absl::OkStatus();
  });
  absl::Status st = absl::OkStatus();
  if (!recorded.ok()) {
    // No events: wait for the streams on the host instead, so the buffer is
    // idle for sure when it is kept.
    RecycleEvents(back);
    {
      MutexLock lock(mu_);
      ++stats_.host_waits;
    }
    for (Stream s : streams) {
      absl::Status synced =
          CallAtBoundary("stream synchronize", [&] { return backend()->SynchronizeStream(s); });
      if (!synced.ok()) {
        // Its work cannot be shown done: kept out of use, retried by Trim.
        {
          MutexLock lock(mu_);
          --stats_.in_use;
        }
        absl::Status copied = CallAtBoundary("staging pool: keep the buffer's streams", [&] {
          back.unsynced = streams;
          return absl::OkStatus();
        });
        if (copied.ok()) {
          Retain(std::move(back));
        } else {
          for (Stream u : streams) back.buffer.RecordStream(u).IgnoreError();
          GiveUp(std::move(back));
        }
        return synced;
      }
    }
  }
  std::optional<Idle> evicted;
  {
    MutexLock lock(mu_);
    --stats_.in_use;
    if (options_.max_buffers > 0) {
      if (idle_.size() == options_.max_buffers) {
        auto oldest = std::min_element(idle_.begin(), idle_.end(), [](const Idle& a, const Idle& b) {
          return a.returned_at < b.returned_at;
        });
        evicted = std::move(*oldest);
        stats_.idle_bytes -= evicted->buffer.size();
        *oldest = std::move(idle_.back());
        idle_.pop_back();
      }
      stats_.idle_bytes += back.buffer.size();
      back.returned_at = ++tick_;
      idle_.push_back(std::move(back));  // capacity reserved
      stats_.idle_buffers = idle_.size();
    }
  }
  // Outside the lock: waits, and the pinned allocator may call the runtime.
  if (evicted) st = Release(std::move(*evicted));
  if (back.buffer.data() != nullptr) {  // not kept: max_buffers is 0
    absl::Status released = Release(std::move(back));
    if (st.ok()) st = released;
  }
  return st;
}

absl::Status StagingBufferPool::WaitFor(const Idle& idle) noexcept {
  for (const Pending& p : idle.pending) {
    GPUALLOC_RETURN_IF_ERROR(CallAtBoundary(
        "event synchronize", [&] { return events_.backend().SynchronizeEvent(p.event); }));
  }
  for (Stream s : idle.unsynced) {
    GPUALLOC_RETURN_IF_ERROR(
        CallAtBoundary("stream synchronize", [&] { return backend()->SynchronizeStream(s); }));
  }
  return absl::OkStatus();
}

absl::Status StagingBufferPool::Release(Idle idle) noexcept {
  // The pinned allocator knows nothing of the buffer's streams (they may be
  // destroyed by now): its work must be done before it goes back.
  if (absl::Status waited = WaitFor(idle); !waited.ok()) {
    Retain(std::move(idle));
    return waited;
  }
  RecycleEvents(idle);
  absl::Status st = idle.buffer.Reset();  // work done: only the runtime can refuse, and the
                                          // pinned allocator keeps and retries what it refuses
  MutexLock lock(mu_);
  ++stats_.releases;
  return st;
}

void StagingBufferPool::Retain(Idle idle) noexcept {
  const std::size_t bytes = idle.buffer.size();
  absl::Status kept = CallAtBoundary("staging pool: retain a buffer", [&] {
    MutexLock lock(mu_);
    retained_.push_back(std::move(idle));  // strong guarantee: on a throw `idle` is intact
    ++stats_.retained_buffers;
    stats_.retained_bytes += bytes;
    return absl::OkStatus();
  });
  if (!kept.ok()) GiveUp(std::move(idle));
}

void StagingBufferPool::GiveUp(Idle idle) noexcept {
  // The pinned allocator orders the release after the buffer's streams
  // itself, or reports that it cannot; nothing is lost silently.
  for (const Pending& p : idle.pending) idle.buffer.RecordStream(p.stream).IgnoreError();
  for (Stream s : idle.unsynced) idle.buffer.RecordStream(s).IgnoreError();
  RecycleEvents(idle);  // nothing waits on them: re-recording them later is harmless
  idle.buffer.Reset().IgnoreError();  // reports its own failure
}

absl::Status StagingBufferPool::Trim() {
  std::vector<Idle> idle;
  std::vector<Idle> retained;
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("staging pool: trim", [&] {
    idle.reserve(options_.max_buffers);  // the most there can be
    return absl::OkStatus();
  }));
  {
    MutexLock lock(mu_);
    for (Idle& i : idle_) idle.push_back(std::move(i));
    idle_.clear();
    retained.swap(retained_);
    stats_.idle_buffers = 0;
    stats_.idle_bytes = 0;
    stats_.retained_buffers = 0;
    stats_.retained_bytes = 0;
  }
  absl::Status st = absl::OkStatus();
  for (std::vector<Idle>* list : {&idle, &retained}) {
    for (Idle& i : *list) {
      absl::Status released = Release(std::move(i));  // retained again if it still fails
      if (st.ok()) st = released;
    }
  }
  return st;
}

StagingPoolStats StagingBufferPool::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace gpualloc
