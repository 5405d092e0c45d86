// PinnedHostAllocator: page-locked host memory, cached, for every device.
//
// Fixes the InfiniCore design the risk review condemns (an unsynchronised
// `gc_queue_` that leaked whatever was queued for a device never made current
// again, and one device switch per deferred free):
//  - Freed blocks go back to a per-owner cache, from any thread, with no
//    device switch: caching needs no runtime call.
//  - Only releasing a block to the runtime needs its owner device current.
//    Evicted blocks whose owner is not the calling thread's current device
//    wait in that owner's pending queue (mutex-guarded). A queue is released
//    in one batch under one device switch: when the owner is current in any
//    thread that calls in (or is announced with OnDeviceCurrent), when the
//    queue reaches `max_pending_per_owner`, on Flush(), and at destruction.
//    Nothing queued is ever dropped, and no queue grows without bound. A
//    block whose release the runtime refuses moves to the owner's refused
//    list: it is retried by Flush(), OnDeviceCurrent() and the destructor,
//    never on the free path, so a refusing runtime costs frees nothing.
//  - Memory comes from the runtime in segments, and a request is carved
//    out of a segment's free range (best fit, split); a freed block merges
//    with its free neighbours. So a workload whose sizes vary reuses what it
//    freed instead of asking the runtime again: a steady state makes almost
//    no runtime calls. Requests of at most `small_request_max` share
//    `small_segment_bytes` segments; larger ones get a segment of their own
//    size (rounded to `large_segment_round`), whose free tail serves other
//    large requests. Small and large never share a segment, so a long-lived
//    small block cannot keep a large segment from being released.
//  - Only a wholly free segment goes back to the runtime. The cache is
//    bounded (`cache_limit_bytes` of free bytes); beyond it, wholly free
//    segments are released, least recently freed first.
//  - Blocks are 512-byte multiples at 512-byte alignment: a block wastes
//    less than 512 bytes of its request.
//  - Stream-aware, like PyTorch's CachingHostAllocator: a block used by
//    device work (an async copy reading or writing it) must be named with
//    RecordStream(block, stream). When it is freed, an event is recorded on
//    each such stream, and the block is reused (or released) only once
//    every one of those events has completed; the allocator polls them on
//    each Allocate and waits for them in Flush and at destruction. If an
//    event cannot be created or recorded, Deallocate waits on the host for
//    that stream instead, so the block is never reused early. Without
//    RecordStream, a block is reused at once: the caller promises no device
//    work still uses it.
// Error model: every method that returns a Status catches whatever is thrown
// inside it (host metadata allocation, a backend that throws) and returns it
// as a Status, with the allocator's state unchanged; no block is ever lost.
// Thread-safe. Counts (stats): hits, misses, releases, device switches made
// for batches, the largest pending queue seen.
#ifndef GPUALLOC_ALLOCATOR_HOST_PINNED_HOST_ALLOCATOR_H_
#define GPUALLOC_ALLOCATOR_HOST_PINNED_HOST_ALLOCATOR_H_

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/backend/backend.h"
#include "allocator/common/mutex.h"

namespace gpualloc {

struct PinnedHostOptions {
  // Free bytes kept for reuse. Beyond it, wholly free segments are released,
  // least recently freed first. Too small a bound and a moving live set
  // makes the allocator release segments and ask for them again
  // (docs/performance.md measures the effect).
  std::size_t cache_limit_bytes = std::size_t{1} << 30;
  std::size_t max_pending_per_owner = 64;
  // Requests of at most `small_request_max` bytes share segments of
  // `small_segment_bytes` (or of the request, if larger). A larger request
  // gets a segment of its size rounded up to `large_segment_round`. With
  // small_request_max = 0 and large_segment_round = 512, every request
  // gets a segment of its own rounded size.
  std::size_t small_request_max = std::size_t{1} << 20;
  std::size_t small_segment_bytes = std::size_t{2} << 20;
  std::size_t large_segment_round = std::size_t{2} << 20;
};

// The size and alignment unit of a pinned block.
inline constexpr std::size_t kPinnedBlockAlignment = 512;

// A pinned block: host-accessible pointer, its size (the request rounded up
// to kPinnedBlockAlignment, or a little more when the rest of a free range
// is too small to split off) and the owner device.
struct PinnedBlock {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  DeviceIndex owner = 0;
};

struct PinnedHostStats {
  std::uint64_t hits = 0;               // requests served from a cached free range
  std::uint64_t misses = 0;             // requests that needed a new segment
  std::uint64_t releases = 0;           // segments given back to the runtime
  std::uint64_t batch_switches = 0;     // device switches made to release a batch
  std::size_t cached_bytes = 0;         // free bytes in segments held
  std::size_t live_bytes = 0;
  std::size_t reserved_bytes = 0;       // pinned bytes held from the runtime, queued ones too
  std::size_t peak_reserved_bytes = 0;
  std::size_t free_segments = 0;        // wholly free segments cached (release candidates)
  std::size_t pending_blocks = 0;       // segments queued for release (refused ones included)
  std::size_t refused_blocks = 0;       // of those, releases the runtime refused
  std::size_t max_pending_seen = 0;
  std::uint64_t failed_releases = 0;    // kept and retried
  std::size_t in_flight_blocks = 0;     // freed, waiting for their streams' events
  std::uint64_t stream_waits = 0;       // events recorded for freed blocks
  std::uint64_t host_waits = 0;         // fallbacks: streams synchronised on the host
};

class PinnedHostAllocator {
 public:
  PinnedHostAllocator(std::shared_ptr<Backend> backend, PinnedHostOptions options = {});
  // Releases every cached and queued block (switching devices as needed).
  // Blocks still live are the caller's leak and are reported on stderr.
  ~PinnedHostAllocator();
  PinnedHostAllocator(const PinnedHostAllocator&) = delete;
  PinnedHostAllocator& operator=(const PinnedHostAllocator&) = delete;

  // Pinned memory owned by `owner`. InvalidArgument for 0 bytes; the
  // runtime's error (after releasing this owner's cache once) on exhaustion.
  absl::StatusOr<PinnedBlock> Allocate(std::size_t bytes, DeviceIndex owner);
  // Marks `block` as used by work on `stream`: when freed, it is not reused
  // until that stream's work enqueued before the free has completed.
  // InvalidArgument for a block that is not live.
  absl::Status RecordStream(const PinnedBlock& block, Stream stream);
  // Returns a block from any thread, whatever device is current. A foreign
  // or double free is InvalidArgument and changes nothing.
  absl::Status Deallocate(const PinnedBlock& block);

  // Releases `owner`'s pending queue (and retries its refused releases) now:
  // call it when `owner` becomes current (e.g. from a Context device
  // listener). Never throws.
  void OnDeviceCurrent(DeviceIndex owner) noexcept;
  // Releases every pending queue and, with `release_cache`, the cache too.
  absl::Status Flush(bool release_cache = false);

  PinnedHostStats stats() const;
  Backend& backend() const { return *backend_; }

 private:
  struct LiveBlock {
    PinnedBlock block;
    std::vector<Stream> streams;  // RecordStream
  };
  // A freed block waiting for the events recorded on its streams.
  struct InFlight {
    std::uint64_t id;  // never reused: a reaper matches the entry it queried,
                       // not a later free of the same block (ABA)
    PinnedBlock block;
    std::vector<Event> events;
  };
  // A piece of a segment: a live block, a block in flight, or a free range.
  // The ranges of a segment tile it, so two ranges of one segment that are
  // neighbours in address order are adjacent in memory.
  struct Range {
    std::size_t bytes;
    bool free;
    bool small;  // of a small segment
    // The segment's node: in its owner's `in_use` list, or in lru_ when the
    // segment is wholly free. Lists, so a segment moves between them by
    // splicing, which never allocates.
    std::list<PinnedBlock>::iterator segment;
  };
  // Free ranges by (size, address): the first at or above a size is the
  // best fit, lowest address first.
  using FreeIndex = std::set<std::pair<std::size_t, std::uintptr_t>>;
  struct Owner {
    std::map<std::uintptr_t, Range> ranges;  // every range of the segments held, by address
    FreeIndex free_small;
    FreeIndex free_large;
    std::list<PinnedBlock> in_use;   // segments with a live or in-flight block
    // Lists, so blocks move between them by splicing, which never allocates:
    // no segment can be lost between two lists.
    std::list<PinnedBlock> pending;  // evicted, awaiting the owner current
    std::list<PinnedBlock> refused;  // releases the runtime refused: retried on Flush
    // A range node kept from the last merge for the next split: a block
    // taken and freed again in a loop then allocates no range node.
    std::map<std::uintptr_t, Range>::node_type spare;
    FreeIndex& free_index(bool small) { return small ? free_small : free_large; }
  };
  // A queue handed over for release: (owner, blocks).
  using Batch = std::pair<DeviceIndex, std::list<PinnedBlock>>;

  // The bodies of the public methods, which run them at the exception
  // boundary. Each keeps the strong guarantee: if it throws, nothing changed.
  absl::StatusOr<PinnedBlock> AllocateImpl(std::size_t bytes, DeviceIndex owner);
  absl::Status RecordStreamImpl(const PinnedBlock& block, Stream stream);
  absl::Status DeallocateImpl(const PinnedBlock& block);
  absl::Status FlushImpl(bool release_cache);

  // Releases `blocks` of `owner` in one batch, switching device once if the
  // calling thread's device differs. Refused releases are spliced onto the
  // owner's refused list. Allocates nothing.
  void ReleaseBatch(DeviceIndex owner, std::list<PinnedBlock> blocks) noexcept;
  void ReleaseAll(std::vector<Batch>& batches) noexcept;
  // Evicts wholly free segments, least recently freed first, while the cache
  // is over its limit, into their owners' pending queues (by splicing); mu_
  // held. Appends the queues to release now (their
  // owner is current, or they reached their bound) to `now`; a queue that
  // cannot be appended stays queued.
  void EvictLocked(std::vector<Batch>* now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  DeviceIndex CurrentDevice() const;
  // Moves in-flight blocks whose events have all completed into the cache
  // (with `wait`, waits for them first), evicting as caching does. A block
  // stays in flight until it is cached, so a throw loses nothing.
  void ReapInFlight(bool wait, std::vector<Batch>* now);
  // A block of `size` (a kPinnedBlockAlignment multiple) carved from the
  // best-fitting free range of `owner`, or nullopt if none fits; mu_ held.
  // Strong: if it throws, nothing changed.
  std::optional<PinnedBlock> TakeCachedLocked(DeviceIndex owner, std::size_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds a new segment from the runtime, `size` bytes of it live; mu_ held.
  // Strong: if it throws, nothing changed (the caller returns the memory).
  PinnedBlock AddSegmentLocked(const PinnedBlock& segment, std::size_t size, bool small)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns a block that no device work uses any more to its segment's free
  // ranges, merged with its free neighbours; mu_ held. Strong.
  void CacheLocked(const PinnedBlock& block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the wholly free segment at `it` (in lru_) to its owner's pending
  // queue; mu_ held. Never allocates.
  void RetireLocked(std::list<PinnedBlock>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The segment a request of `size` bytes gets, and whether it is small.
  std::pair<std::size_t, bool> SegmentFor(std::size_t size) const;
  // Events are pooled per device, not destroyed after each use: fewer
  // runtime calls, and no event leaks when a destroy is refused (a lost
  // device) — the pool is destroyed at destruction.
  absl::StatusOr<Event> AcquireEvent(DeviceIndex device);
  void RecycleEvents(const std::vector<Event>& events) noexcept;
  void DestroyEvent(Event event) noexcept;
  static constexpr std::size_t kSpareEventsPerDevice = 64;

  const std::shared_ptr<Backend> backend_;
  const PinnedHostOptions options_;
  mutable Mutex mu_;
  // Wholly free segments, least recently freed first.
  std::list<PinnedBlock> lru_ ABSL_GUARDED_BY(mu_);
  // std::unordered_map, not absl::flat_hash_map: its insert and rehash keep
  // the strong guarantee when allocation throws (Abseil's tables are left
  // inconsistent), which the error model above relies on.
  std::unordered_map<DeviceIndex, Owner> owners_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<void*, LiveBlock> live_ ABSL_GUARDED_BY(mu_);
  std::list<InFlight> in_flight_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<DeviceIndex, std::vector<Event>> spare_events_ ABSL_GUARDED_BY(mu_);
  std::uint64_t next_in_flight_id_ ABSL_GUARDED_BY(mu_) = 1;
  PinnedHostStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_HOST_PINNED_HOST_ALLOCATOR_H_
