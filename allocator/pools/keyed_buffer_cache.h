// KeyedBufferCache: small device buffers kept by what they are for, so code
// that runs the same reduction or convergence check every iteration gets its
// buffer back instead of allocating one. Like ringkernel's
// ReductionBufferCache: a bounded number of buffers per key, returned on
// scope exit, a hit rate, and host-readable result slots.
//
//   auto cache = KeyedBufferCache::Create(caching_allocator, pinned).value();
//   for (int it = 0; it < iterations; ++it) {
//     absl::StatusOr<KeyedBuffer<float>> sum = cache->Acquire<float>(4, Reduction::kSum, stream);
//     sum->Zero();
//     reduce_kernel<<<..., stream>>>(x, sum->data());
//     float residual = sum->ReadResult(0).value();
//   }  // each iteration's buffer goes back to the cache here; the next one reuses it
//
// Contract:
//  - A key is (element type, element count, purpose): buffers of one key are
//    interchangeable; a buffer is never handed out under another key.
//    `purpose` is any integer or enum that tells uses apart (ringkernel's
//    ReductionOp).
//  - Device memory comes from `device_memory` (a CachingAllocator, typically)
//    in the order of the stream passed to Acquire; result slots are pinned
//    memory from `pinned`, made on the first ReadResult and kept with the
//    buffer. Both must be of the same runtime and device.
//  - Stream order: a buffer belongs to the stream it was acquired on. Handed
//    out again on another stream, that stream first waits (on the device,
//    through an event) for the work queued on the old one; if the event
//    cannot be recorded, the buffer is freed in its old stream's order and
//    a new one is allocated. A buffer also used on other streams must be
//    named with RecordStream: its next user waits for them too. Memory the
//    cache frees is freed in its stream's order (DeviceBuffer).
//  - Bounded: at most `max_per_key` idle buffers per key and
//    `max_idle_buffers` in all; a buffer returned beyond either is freed.
//  - Errors: InvalidArgument for a zero count, a size that overflows, or a
//    stream of another device; the allocator's error otherwise. A failed call
//    changes nothing; whatever is thrown inside becomes a Status.
// Thread-safe: one cache may serve any number of threads. A KeyedBuffer
// belongs to one thread at a time, and keeps its cache alive.
#ifndef GPUALLOC_ALLOCATOR_POOLS_KEYED_BUFFER_CACHE_H_
#define GPUALLOC_ALLOCATOR_POOLS_KEYED_BUFFER_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <typeindex>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "allocator/buffer/device_buffer.h"
#include "allocator/buffer/host_buffers.h"
#include "allocator/common/mutex.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/transfer/event_pool.h"
#include "allocator/transfer/transfers.h"

namespace gpualloc {

struct KeyedCacheOptions {
  std::size_t max_per_key = 4;
  std::size_t max_idle_buffers = 256;
};

struct KeyedCacheStats {
  std::uint64_t acquires = 0;         // successful Acquire calls
  std::uint64_t hits = 0;             // served by an idle buffer of the key
  std::uint64_t misses = 0;           // served by a new buffer
  std::uint64_t stream_handoffs = 0;  // hits on another stream: ordered by an event
  std::uint64_t dropped = 0;          // returned beyond a bound (or unorderable): freed
  std::size_t idle_buffers = 0;
  std::size_t idle_bytes = 0;         // device bytes of the idle buffers
  std::size_t in_use = 0;
  std::size_t keys = 0;               // keys with an idle buffer

  double hit_rate() const {
    return acquires == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(acquires);
  }
};

// What a buffer is for: element type and size, element count, purpose.
struct BufferKey {
  std::type_index type = typeid(void);
  std::size_t element_bytes = 0;
  std::size_t count = 0;
  std::uint64_t purpose = 0;

  friend bool operator==(const BufferKey&, const BufferKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BufferKey& k) {
    return H::combine(std::move(h), k.type.hash_code(), k.element_bytes, k.count, k.purpose);
  }
};

class KeyedBufferCache;

// One cached buffer, untyped: what KeyedBuffer<T> wraps. Move-only; back to
// its cache on Reset() or destruction (noexcept; a buffer the cache cannot
// keep is freed in its stream's order, and a failure is reported).
class CachedBuffer {
 public:
  CachedBuffer() = default;
  CachedBuffer(CachedBuffer&& other) noexcept;
  CachedBuffer& operator=(CachedBuffer&& other) noexcept;
  ~CachedBuffer();

  void* data() const;
  std::size_t size_bytes() const;
  Stream stream() const;
  const BufferKey& key() const { return key_; }
  bool empty() const { return entry_ == nullptr; }

  // Work on `stream` (besides stream()) uses the buffer: its next user
  // waits for that work too. InvalidArgument for another device's stream.
  absl::Status RecordStream(Stream stream);
  // Enqueues a fill of the whole buffer with zero bytes on stream().
  absl::Status Zero();
  // Copies [offset, offset+n) of the buffer into its pinned result slots on
  // stream(), waits for it, and copies it out to `dst`. OutOfRange past
  // the buffer.
  absl::Status Read(std::size_t offset, void* dst, std::size_t n);
  absl::Status Reset() noexcept;

 private:
  friend class KeyedBufferCache;
  struct Entry;
  CachedBuffer(std::shared_ptr<KeyedBufferCache> cache, std::unique_ptr<Entry> entry,
               BufferKey key);

  std::shared_ptr<KeyedBufferCache> cache_;
  std::unique_ptr<Entry> entry_;
  BufferKey key_;
};

// A cached buffer of `count()` elements of T.
template <typename T>
class KeyedBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "device buffers hold trivially copyable types");

 public:
  KeyedBuffer() = default;
  explicit KeyedBuffer(CachedBuffer buffer) : buffer_(std::move(buffer)) {}

  T* data() const { return static_cast<T*>(buffer_.data()); }
  std::size_t count() const { return buffer_.key().count; }
  Stream stream() const { return buffer_.stream(); }
  DeviceSpan span() const { return {buffer_.data(), buffer_.size_bytes(), buffer_.stream().device}; }
  bool empty() const { return buffer_.empty(); }

  absl::Status RecordStream(Stream stream) { return buffer_.RecordStream(stream); }
  absl::Status Zero() { return buffer_.Zero(); }
  // The element at `slot`, read through the pinned result slots after the
  // work queued on stream() so far.
  absl::StatusOr<T> ReadResult(std::size_t slot) {
    if (slot >= count()) {
      return absl::OutOfRangeError("KeyedBuffer::ReadResult: slot past the buffer's elements");
    }
    T value;
    absl::Status st = buffer_.Read(slot * sizeof(T), &value, sizeof(T));
    if (!st.ok()) return st;
    return value;
  }
  // Every element, read the same way.
  absl::StatusOr<std::vector<T>> ReadResults() {
    std::vector<T> out(count());
    absl::Status st = buffer_.Read(0, out.data(), out.size() * sizeof(T));
    if (!st.ok()) return st;
    return out;
  }
  absl::Status Reset() noexcept { return buffer_.Reset(); }

 private:
  CachedBuffer buffer_;
};

class KeyedBufferCache : public std::enable_shared_from_this<KeyedBufferCache> {
 public:
  // InvalidArgument for a null resource or allocator.
  static absl::StatusOr<std::shared_ptr<KeyedBufferCache>> Create(
      std::shared_ptr<MemoryResource> device_memory, std::shared_ptr<PinnedHostAllocator> pinned,
      KeyedCacheOptions options = {});
  KeyedBufferCache(const KeyedBufferCache&) = delete;
  KeyedBufferCache& operator=(const KeyedBufferCache&) = delete;
  ~KeyedBufferCache();

  // A buffer of `count` elements of T for `purpose`, usable on `stream`.
  template <typename T, typename Purpose>
  absl::StatusOr<KeyedBuffer<T>> Acquire(std::size_t count, Purpose purpose, Stream stream) {
    static_assert(std::is_integral_v<Purpose> || std::is_enum_v<Purpose>,
                  "a purpose is an integer or an enum");
    absl::StatusOr<CachedBuffer> b = AcquireBuffer(
        BufferKey{typeid(T), sizeof(T), count, static_cast<std::uint64_t>(purpose)}, stream);
    if (!b.ok()) return b.status();
    return KeyedBuffer<T>(*std::move(b));
  }
  // The untyped form: a buffer of key.count * key.element_bytes bytes.
  absl::StatusOr<CachedBuffer> AcquireBuffer(const BufferKey& key, Stream stream);

  // Frees every idle buffer (each in its stream's order).
  absl::Status Trim();
  KeyedCacheStats stats() const;

 private:
  friend class CachedBuffer;
  using Entry = CachedBuffer::Entry;
  KeyedBufferCache(std::shared_ptr<MemoryResource> device_memory,
                   std::shared_ptr<PinnedHostAllocator> pinned, KeyedCacheOptions options);

  absl::StatusOr<CachedBuffer> AcquireImpl(const BufferKey& key, Stream stream);
  // Makes `entry` usable on `stream`. Never throws.
  absl::Status HandOff(Entry& entry, Stream stream) noexcept;
  // A buffer back from use. Never throws.
  absl::Status Return(std::unique_ptr<Entry> entry, const BufferKey& key) noexcept
      ABSL_LOCKS_EXCLUDED(mu_);
  // Frees `entry` in its stream's order, after the work on its other streams.
  absl::Status Free(std::unique_ptr<Entry> entry) noexcept;

  const std::shared_ptr<MemoryResource> device_memory_;
  const std::shared_ptr<PinnedHostAllocator> pinned_;
  const KeyedCacheOptions options_;
  const Transfers transfers_;  // over the pinned allocator's backend
  EventPool events_;           // the events that order handoffs between streams
  mutable Mutex mu_;
  // A standard map: Abseil's tables are left inconsistent by a failed
  // allocation, and an insert here may fail (Return then frees the buffer).
  using IdleMap =
      std::unordered_map<BufferKey, std::vector<std::unique_ptr<Entry>>, absl::Hash<BufferKey>>;
  IdleMap idle_ ABSL_GUARDED_BY(mu_);
  KeyedCacheStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POOLS_KEYED_BUFFER_CACHE_H_
