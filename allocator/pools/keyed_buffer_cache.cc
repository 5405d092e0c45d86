#include "allocator/pools/keyed_buffer_cache.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

struct CachedBuffer::Entry {
  DeviceBuffer device;
  Stream stream;                // the stream it belongs to now
  std::vector<Stream> others;   // other streams that used it (RecordStream)
  PinnedBuffer results;         // result slots, made on the first Read
};

// --- CachedBuffer ----------------------------------------------------------------------

CachedBuffer::CachedBuffer(std::shared_ptr<KeyedBufferCache> cache, std::unique_ptr<Entry> entry,
                           BufferKey key)
    : cache_(std::move(cache)), entry_(std::move(entry)), key_(key) {}

CachedBuffer::CachedBuffer(CachedBuffer&& other) noexcept
    : cache_(std::move(other.cache_)), entry_(std::move(other.entry_)), key_(other.key_) {}

CachedBuffer& CachedBuffer::operator=(CachedBuffer&& other) noexcept {
  if (this != &other) {
    Reset().IgnoreError();
    cache_ = std::move(other.cache_);
    entry_ = std::move(other.entry_);
    key_ = other.key_;
  }
  return *this;
}

CachedBuffer::~CachedBuffer() { Reset().IgnoreError(); }

void* CachedBuffer::data() const { return entry_ ? entry_->device.data() : nullptr; }
std::size_t CachedBuffer::size_bytes() const { return entry_ ? entry_->device.size() : 0; }
Stream CachedBuffer::stream() const { return entry_ ? entry_->stream : Stream{}; }

absl::Status CachedBuffer::RecordStream(Stream stream) {
  if (empty()) return absl::FailedPreconditionError("CachedBuffer: empty buffer");
  if (stream.device != entry_->stream.device) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CachedBuffer: a stream of device %d used with a buffer of device %d", stream.device,
        entry_->stream.device));
  }
  if (stream == entry_->stream) return absl::OkStatus();
  for (Stream s : entry_->others) {
    if (s == stream) return absl::OkStatus();
  }
  return CallAtBoundary("CachedBuffer: record stream", [&] {
    entry_->others.push_back(stream);
    return absl::OkStatus();
  });
}

absl::Status CachedBuffer::Zero() {
  if (empty()) return absl::FailedPreconditionError("CachedBuffer: empty buffer");
  return CallAtBoundary("memset async", [&] {
    return cache_->events_.backend().MemsetAsync(data(), 0, size_bytes(), entry_->stream);
  });
}

absl::Status CachedBuffer::Read(std::size_t offset, void* dst, std::size_t n) {
  if (empty()) return absl::FailedPreconditionError("CachedBuffer: empty buffer");
  if (offset > size_bytes() || n > size_bytes() - offset) {
    return absl::OutOfRangeError(absl::StrFormat(
        "CachedBuffer::Read: [%d, +%d) is outside the buffer's %d bytes", offset, n, size_bytes()));
  }
  if (n == 0) return absl::OkStatus();
  Entry& e = *entry_;
  if (e.results.data() == nullptr) {
    GPUALLOC_ASSIGN_OR_RETURN(e.results,
                              PinnedBuffer::Create(cache_->pinned_, size_bytes(), e.stream.device));
  }
  Backend& backend = cache_->events_.backend();
  void* slot = static_cast<char*>(e.results.data()) + offset;
  GPUALLOC_RETURN_IF_ERROR(CallAtBoundary("memcpy async", [&] {
    return backend.MemcpyAsync(slot, static_cast<char*>(data()) + offset, n,
                               CopyKind::kDeviceToHost, e.stream);
  }));
  // Waits for the copy (and what was queued before it), not for the stream.
  absl::StatusOr<Event> copied = cache_->events_.Acquire();
  absl::Status waited = copied.status();
  if (copied.ok()) {
    waited = CallAtBoundary("event record", [&] { return backend.RecordEvent(*copied, e.stream); });
    if (waited.ok()) {
      waited = CallAtBoundary("event synchronize", [&] { return backend.SynchronizeEvent(*copied); });
    }
    cache_->events_.Recycle(*copied);
  }
  if (!waited.ok()) {
    // The copy may still be running: the pinned allocator must order the
    // slots' release after it.
    e.results.RecordStream(e.stream).IgnoreError();
    return waited;
  }
  return e.results.HostRead(offset, dst, n);
}

absl::Status CachedBuffer::Reset() noexcept {
  if (entry_ == nullptr) return absl::OkStatus();
  std::shared_ptr<KeyedBufferCache> cache = std::move(cache_);
  return cache->Return(std::move(entry_), key_);
}

// --- KeyedBufferCache ------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<KeyedBufferCache>> KeyedBufferCache::Create(
    std::shared_ptr<MemoryResource> device_memory, std::shared_ptr<PinnedHostAllocator> pinned,
    KeyedCacheOptions options) {
  if (device_memory == nullptr) {
    return absl::InvalidArgumentError("keyed buffer cache: null device memory resource");
  }
  if (pinned == nullptr) return absl::InvalidArgumentError("keyed buffer cache: null pinned allocator");
  return CallAtBoundary("keyed buffer cache: create",
                        [&]() -> absl::StatusOr<std::shared_ptr<KeyedBufferCache>> {
    return std::shared_ptr<KeyedBufferCache>(
        new KeyedBufferCache(std::move(device_memory), std::move(pinned), options));
  });
}

KeyedBufferCache::KeyedBufferCache(std::shared_ptr<MemoryResource> device_memory,
                                   std::shared_ptr<PinnedHostAllocator> pinned,
                                   KeyedCacheOptions options)
    : device_memory_(std::move(device_memory)),
      pinned_(pinned),
      options_(options),
      // The pinned allocator's backend, kept alive by the allocator itself.
      transfers_(std::shared_ptr<Backend>(pinned, &pinned->backend())),
      events_(transfers_.backend(), device_memory_->device()) {}

KeyedBufferCache::~KeyedBufferCache() { Trim().IgnoreError(); }

absl::StatusOr<CachedBuffer> KeyedBufferCache::AcquireBuffer(const BufferKey& key, Stream stream) {
  return CallAtBoundary("keyed buffer cache: acquire", [&] { return AcquireImpl(key, stream); });
}

absl::StatusOr<CachedBuffer> KeyedBufferCache::AcquireImpl(const BufferKey& key, Stream stream) {
  const std::optional<std::size_t> bytes = CheckedMul(key.count, key.element_bytes);
  if (key.count == 0 || key.element_bytes == 0 || !bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "keyed buffer cache: %d elements of %d bytes %s", key.count, key.element_bytes,
        bytes ? "is empty" : "overflows the size arithmetic"));
  }
  if (stream.device != device_memory_->device()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "keyed buffer cache: a stream of device %d, for memory of device %d", stream.device,
        device_memory_->device()));
  }
  std::unique_ptr<Entry> entry;
  {
    MutexLock lock(mu_);
    if (auto it = idle_.find(key); it != idle_.end()) {
      entry = std::move(it->second.back());
      it->second.pop_back();
      if (it->second.empty()) idle_.erase(it);
      --stats_.idle_buffers;
      stats_.idle_bytes -= entry->device.size();
      stats_.keys = idle_.size();
    }
  }
  if (entry != nullptr) {
    const bool handoff = entry->stream != stream || !entry->others.empty();
    if (absl::Status handed = HandOff(*entry, stream); handed.ok()) {
      MutexLock lock(mu_);
      ++stats_.acquires;
      ++stats_.hits;
      if (handoff) ++stats_.stream_handoffs;
      ++stats_.in_use;
      return CachedBuffer(shared_from_this(), std::move(entry), key);
    }
    // Not orderable onto `stream`: freed in its own stream's order instead.
    Free(std::move(entry)).IgnoreError();
    MutexLock lock(mu_);
    ++stats_.dropped;
  }
  GPUALLOC_ASSIGN_OR_RETURN(DeviceBuffer fresh, DeviceBuffer::Create(device_memory_, *bytes, stream));
  entry = std::make_unique<Entry>();
  entry->device = std::move(fresh);
  entry->stream = stream;
  MutexLock lock(mu_);
  ++stats_.acquires;
  ++stats_.misses;
  ++stats_.in_use;
  return CachedBuffer(shared_from_this(), std::move(entry), key);
}

absl::Status KeyedBufferCache::HandOff(Entry& entry, Stream stream) noexcept {
  if (entry.stream != stream) {
    GPUALLOC_RETURN_IF_ERROR(events_.Order(entry.stream, stream));
  }
  for (Stream s : entry.others) {
    if (s != stream) GPUALLOC_RETURN_IF_ERROR(events_.Order(s, stream));
  }
  // Everything queued on the old streams now comes before `stream`'s work:
  // freeing it on `stream` later is ordered after all of it.
  entry.stream = stream;
  entry.others.clear();
  entry.device.set_stream(stream);
  return absl::OkStatus();
}

absl::Status KeyedBufferCache::Return(std::unique_ptr<Entry> entry, const BufferKey& key) noexcept {
  {
    MutexLock lock(mu_);
    --stats_.in_use;
  }
  absl::Status kept = CallAtBoundary("keyed buffer cache: return", [&] {
    MutexLock lock(mu_);
    if (stats_.idle_buffers >= options_.max_idle_buffers) return absl::OkStatus();
    std::vector<std::unique_ptr<Entry>>& list = idle_[key];  // may throw: nothing changed
    if (list.size() >= options_.max_per_key) return absl::OkStatus();
    const std::size_t bytes = entry->device.size();
    list.push_back(std::move(entry));  // strong guarantee: on a throw `entry` is still ours
    ++stats_.idle_buffers;
    stats_.idle_bytes += bytes;
    stats_.keys = idle_.size();
    return absl::OkStatus();
  });
  if (entry == nullptr) return absl::OkStatus();
  {
    MutexLock lock(mu_);
    ++stats_.dropped;
    if (auto it = idle_.find(key); it != idle_.end() && it->second.empty()) idle_.erase(it);
    stats_.keys = idle_.size();
  }
  absl::Status freed = Free(std::move(entry));
  return kept.ok() ? freed : kept;
}

absl::Status KeyedBufferCache::Free(std::unique_ptr<Entry> entry) noexcept {
  absl::Status st = absl::OkStatus();
  // The other streams' work comes before the free on the buffer's stream:
  // ordered on the device, or waited for on the host when it cannot be.
  for (Stream s : entry->others) {
    absl::Status ordered = events_.Order(s, entry->stream);
    if (!ordered.ok()) {
      ordered = CallAtBoundary("stream synchronize",
                               [&] { return transfers_.backend()->SynchronizeStream(s); });
    }
    if (!ordered.ok() && st.ok()) st = ordered;
  }
  absl::Status freed = entry->device.Reset();  // in entry->stream's order; reports a failure
  absl::Status slots = entry->results.Reset();
  if (!freed.ok()) return freed;
  return st.ok() ? slots : st;
}

absl::Status KeyedBufferCache::Trim() {
  IdleMap taken;
  {
    MutexLock lock(mu_);
    taken.swap(idle_);
    stats_.idle_buffers = 0;
    stats_.idle_bytes = 0;
    stats_.keys = 0;
  }
  absl::Status st = absl::OkStatus();
  for (auto& [key, list] : taken) {
    for (auto& e : list) {
      absl::Status freed = Free(std::move(e));
      if (st.ok()) st = freed;
    }
  }
  return st;
}

KeyedCacheStats KeyedBufferCache::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace gpualloc
