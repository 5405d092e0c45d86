// CachingAllocator: a stream-aware caching device allocator over any Backend.
//
// Device allocation through the runtime costs microseconds and synchronises;
// this allocator obtains large segments from the backend, splits them into
// blocks for requests, and keeps freed blocks cached for reuse. See
// caching_options.h for the rounding and pool rules and docs/design.md for
// the block structure and the stream rules.
//
//   auto cache = CachingAllocator::Create(backend, /*device=*/0, {}).value();
//   absl::StatusOr<Allocation> a = cache->Allocate(1 << 20, stream);
//   ... use a->ptr on `stream` ...
//   cache->Deallocate(*a);            // reusable on `stream` at once
//
// Guarantees:
//  - Best fit among free blocks in O(log n), however many holes there are.
//  - A block freed on stream S is reusable on S at once; on another stream
//    only as CachingOptions::cross_stream allows (after an event recorded on
//    S has completed, or with the new stream waiting on that event).
//    RecordStream(a, T) makes a block wait, when freed, for T's work too.
//  - A free on stream F waits for every other stream that used the block:
//    its allocation stream and every stream given to RecordStream. Events
//    recorded on them must all complete before the block is reused (on any
//    stream); if an event cannot be recorded, the free waits on the host
//    for those streams instead. Expandable segments never unmap a free tail
//    while work queued on its stream may still touch it.
//  - Strong guarantee on Allocate, with one exception: if the backend fails
//    or throws at any point, or the metadata resource throws (see
//    CachingOptions::metadata_resource), no device memory leaks and the
//    allocator's state and stats are as before — except
//    that on the way to a new segment or out-of-memory it may already have
//    returned the threads' parked blocks (front caches) to the free index
//    and cached free segments to the device (and merged free neighbours) to
//    make room. That changes only the cache (reserved and free bytes,
//    segments); live allocations and the allocated figures never change on
//    failure.
//  - Deallocate of a pointer it does not own, twice, with the wrong size, or
//    on another device's stream is InvalidArgument and changes nothing.
//  - Out of memory: free cached segments are released (least recently used
//    first) and the allocation retried, then OOM callbacks run (outside the
//    lock) and it is retried, then it fails with a Status that says where the
//    reserved memory is.
//
// Thread safety: all methods may be called from any thread. One mutex per
// allocator (one allocator per device, so devices never contend) guards all
// state; backend calls for new segments and releases happen under it, OOM
// callbacks never do. The metadata resource is called only under it too.
// With front caches (CachingOptions::front_cache_blocks), each thread's
// cache has a lock of its own, which its thread's repeated sizes take
// instead (front_cache.h); stats and snapshots take every cache's lock, so
// they stay exact.
#ifndef GPUALLOC_ALLOCATOR_CACHING_CACHING_ALLOCATOR_H_
#define GPUALLOC_ALLOCATOR_CACHING_CACHING_ALLOCATOR_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/attributes.h"
#include "allocator/backend/backend.h"
#include "allocator/caching/block.h"
#include "allocator/caching/caching_options.h"
#include "allocator/caching/front_cache.h"
#include "allocator/common/mutex.h"
#include "allocator/policy/tag_interner.h"
#include "allocator/resource/allocation_recorder.h"
#include "allocator/resource/memory_resource.h"
#include "allocator/stats/memory_snapshot.h"

namespace gpualloc {

// Passed to OOM callbacks: the device and the rounded request that failed.
struct OomEvent {
  DeviceIndex device = 0;
  std::size_t requested = 0;
};
// Returns true if it freed something worth retrying for. Runs outside the
// allocator's lock, so it may free allocations of this allocator. Exceptions
// are caught and count as false.
using OomCallback = std::function<bool(const OomEvent&)>;

class CachingAllocator final : public MemoryResource,
                               public AllocationRecorder {
 public:
  // InvalidArgument for inconsistent options; the backend's error if the
  // device does not exist.
  static absl::StatusOr<std::unique_ptr<CachingAllocator>> Create(std::shared_ptr<Backend> backend,
                                                                  DeviceIndex device,
                                                                  CachingOptions options);
  // Synchronises the device and returns every segment to the backend.
  // Allocations still live are leaks of the caller: they are counted and
  // reported on stderr, and their memory is released too.
  ~CachingAllocator() override;

  absl::string_view name() const override { return "caching"; }
  DeviceIndex device() const override { return device_; }
  std::size_t alignment() const override { return alignment_; }
  MemoryStats stats() const override;
  // The same counters for the small pool [0] and the large pool [1] (their
  // sums are stats(); largest_free_block is only filled in stats()).
  std::array<MemoryStats, 2> pool_stats() const;

  // Marks `allocation` as used by `stream` as well: when freed, it is not
  // reused until `stream`'s work enqueued before the free has completed.
  // `stream` may be a peer device's (a kernel using this memory through peer
  // access, a peer copy): the free then waits on an event of that device.
  // InvalidArgument for a stream of a device the backend does not have.
  absl::Status RecordStream(const Allocation& allocation, Stream stream);

  // Returns cached free segments to the backend, least recently used first,
  // until at most `keep_bytes` of cached free memory remain. Waits for
  // blocks still pending on other streams' events first.
  absl::Status EmptyCache(std::size_t keep_bytes = 0);

  // Caps reserved bytes (0: the device's capacity). Lowering it below what
  // is reserved releases free segments; it never frees live allocations, but
  // while they hold the allocator over the limit, each segment they free is
  // released at once instead of cached.
  absl::Status SetReservedLimit(std::size_t bytes);
  std::size_t reserved_limit() const;

  // Registers a callback run when an allocation is about to fail.
  void AddOomCallback(OomCallback callback);

  // True when `ptr` is the start of one of this allocator's live allocations.
  bool Owns(const void* ptr) const;

  // Every segment and block, and the stats at that instant, for invariant
  // checks and reports.
  MemorySnapshot Snapshot() const;
  void ResetPeakStats();

  // AllocationRecorder: once started, each allocation's order and its
  // thread's allocation tag are kept in its block, under the lock the
  // allocation holds anyway (a tag is interned once, in the metadata
  // resource). TrackingAdaptor uses this instead of a table of its own.
  AllocationRecorder* recorder() override { return this; }
  void StartRecording() override;
  std::vector<RecordedAllocation> RecordedLive() const override;
  std::size_t recorded_live_count() const override;

 private:
  using Block = caching_detail::Block;
  using Segment = caching_detail::Segment;
  using FreeSet = caching_detail::FreeSet;
  using LiveMap = caching_detail::LiveMap;
  using BlockPtr = caching_detail::BlockPtr;
  using SegmentPtr = caching_detail::SegmentPtr;
  using FrontCache = caching_detail::FrontCache;

  CachingAllocator(std::shared_ptr<Backend> backend, DeviceIndex device, CachingOptions options,
                   std::size_t capacity, std::size_t alignment);

  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  // Everything but a front cache's hit, under the allocator's lock. Out of
  // line: the hit then pays no frame for the slow path's locals.
  ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<Allocation> AllocateSlow(std::size_t bytes,
                                                                  Stream stream);
  ABSL_ATTRIBUTE_NOINLINE absl::Status DeallocateSlow(const Allocation& allocation, Stream stream);
  absl::Status DoDeallocateAfterSync(const Allocation& allocation) override;

  // --- all below run with mu_ held ---
  // One attempt: cached block, another stream's block, or a new segment
  // (releasing cached segments on OOM). Sets *oom on out-of-memory.
  absl::StatusOr<Allocation> TryAllocateLocked(std::size_t rounded, std::size_t requested,
                                               Stream stream, bool* oom)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  FreeSet& PoolFor(std::size_t rounded) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return rounded <= options_.small_request_max ? small_ : large_;
  }
  bool IsSmall(const FreeSet& pool) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return &pool == &small_;
  }
  std::size_t SegmentSizeFor(std::size_t rounded) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ShouldSplit(const Block& block, std::size_t rounded) const;
  bool FitsSplitRules(const Block& block, std::size_t rounded) const;
  Block* FindFree(FreeSet& pool, Stream stream, std::size_t rounded)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Block* HarvestFromOtherStream(FreeSet& pool, Stream stream, std::size_t rounded)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Allocation> NewSegment(FreeSet& pool, Stream stream, std::size_t rounded,
                                        std::size_t requested, bool* oom)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The device memory for a new segment of `size` bytes, with the ladder
  // run when the device or the reserved limit refuses (out_of_memory.cc). May
  // shrink `size` to `rounded` as its last rung, resizing `block` (and
  // dropping `spare` if it no longer splits).
  absl::StatusOr<void*> SegmentMemory(std::size_t& size, std::size_t rounded, Block& block,
                                      BlockPtr& spare) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The expandable-segment path of NewSegment: grow the pool's segment.
  absl::StatusOr<Allocation> GrowExpandable(FreeSet& pool, Stream stream, std::size_t rounded,
                                            std::size_t requested, bool* oom)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Unmaps up to `cut` bytes (granularity multiples) of an expandable
  // segment's free tail; deletes the segment when nothing is left. Returns
  // the bytes released.
  std::size_t ShrinkExpandable(Segment* segment, std::size_t cut)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t TrimExpandableTails(const Segment* exclude) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The host waits for all work queued on the device: before memory is
  // unmapped under it. Never a single stream: the stream a block was last
  // used on may have been destroyed by its user since the free.
  absl::Status WaitForDeviceWork();
  void RetryRetiredRanges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t TrimmableTailBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `block` (already out of its free set) for a request, splitting off
  // the remainder into `spare` when worthwhile. No-throw.
  // The common split without moving set nodes: `spare` becomes the front of
  // `free_block` (allocated) and `free_block` stays in `pool` as the
  // remainder, if its place in the order holds; else null and nothing
  // changed. Not for expandable segments. No-throw.
  Block* SplitFrontInPlace(FreeSet& pool, Block* free_block, BlockPtr& spare,
                           std::size_t rounded) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The free neighbour after `block` takes it in, staying in its pool, if
  // its place in the order holds; else false and nothing changed. No-throw.
  bool AbsorbIntoNextInPlace(Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees the live block at `it` on `stream`: pending on `events` (from the
  // other streams that used it) or straight back to its pool. No-throw.
  enum class FreeKind {
    kOnStream,         // a free on `stream`, which its caller has: free markers apply
    kAfterDeviceSync,  // nothing queued on it anywhere: any stream may take it at once
    kParkedEarlier,    // freed into a front cache on `stream` earlier: stays with it
  };
  void CommitFree(LiveMap::iterator it, Stream stream, std::pmr::vector<Event> events,
                  FreeKind kind) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records an allocated block: the live map, its segment's recency, stats.
  // No-throw after ReserveLive().
  Allocation Register(Block* block, std::size_t requested) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Room in the live map for one more block, so Register never rehashes.
  // Fallible: called before an allocation's first change.
  void ReserveLive() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Allocation Commit(Block* block, BlockPtr spare, std::size_t rounded, std::size_t requested,
                    Stream stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fallible: a block and its nodes (or a recycled one).
  BlockPtr NewBlock() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps a block merged away for the next NewBlock (bounded), else deletes it.
  void RecycleBlock(Block* block) noexcept ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteBlock(Block* block) noexcept { PmrDelete(metadata_, block); }
  void DeleteSegment(Segment* segment) noexcept { PmrDelete(metadata_, segment); }
  void InsertFree(Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);      // no-throw
  void EraseFree(Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);       // no-throw
  // The stats of a block entering or leaving its free set (as it is now).
  void CountFree(const Block& block, bool entering) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns a free block to its pool, merged with same-stream free neighbours.
  void ReturnToPool(Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ProcessPendingEvents() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WaitForAllPending() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Synchronises the device, then merges free neighbours whatever their
  // stream (all streams are idle), so split segments can be released.
  absl::Status CoalesceAfterSync() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The fully free segments, least recently used first, in free_segments_
  // (valid until the next call). Never allocates.
  const std::pmr::vector<Segment*>& FullyFreeSegmentsLruFirst() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Room in free_segments_ for one more segment. Fallible: called before a
  // new segment's first change.
  void ReserveSegmentSlot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t LargestFreeBlockLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases fully free segments, least recently used first, until `enough`
  // bytes were released (or none is left). Returns the bytes released.
  // `exclude` (a segment being grown) is never touched.
  std::size_t ReleaseFreeSegments(std::size_t enough, const Segment* exclude = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ReleaseSegment(Segment* segment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::size_t EffectiveLimit() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return limit_ ? limit_ : capacity_;
  }
  bool OverLimitLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<std::size_t>(stats_.reserved_bytes.current) > EffectiveLimit();
  }
  // Releases free segments while reserved is above the limit.
  void EnforceLimitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Event> AcquireEvent() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An event of `device`: a spare for the allocator's own device, a new one
  // for a peer's (recycling destroys it).
  absl::StatusOr<Event> AcquireEventOn(DeviceIndex device) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecycleEvent(Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DestroyEventQuietly(Event event) noexcept;  // teardown: errors and throws ignored
  absl::Status OutOfMemoryError(std::size_t requested, std::size_t rounded, Stream stream) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies a stats update to the totals and to the pool it happened in.
  template <typename Fn>
  void Account(bool small_pool, Fn fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    fn(stats_);
    fn(pool_stats_[small_pool ? 0 : 1]);
  }
  // --- the per-thread front cache (front_cache.cc, front_cache.h) ---
  bool FrontServes(std::size_t rounded) const {
    return front_serving_.load(std::memory_order_relaxed) && rounded <= options_.front_cache_bytes;
  }
  // Without the allocator's lock: a block the calling thread parked, now
  // allocated for `bytes` on `stream`, or null.
  Block* AllocateFromFront(std::size_t rounded, std::size_t bytes, Stream stream);
  // Without the allocator's lock: parks `allocation` in the calling thread's
  // cache if it is that cache's live loan and parkable there; false (and
  // nothing changed) for everything else, which the slow path handles.
  bool FreeIntoFront(const Allocation& allocation, Stream stream);
  bool Parkable(const Block& block, const Allocation& allocation, Stream stream) const;
  // Room in `front` for `block` within both bounds.
  bool HasRoomFor(const FrontCache& front, const Block& block) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu);
  // Inlined (defined in front_cache.cc, their only user): both are on the
  // front cache's hit path.
  ABSL_ATTRIBUTE_ALWAYS_INLINE inline void Park(FrontCache& front, Block* block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu);
  // Removes the i-th parked block from `front`'s list (its bytes too) and
  // returns it; the caller decides what it becomes.
  ABSL_ATTRIBUTE_ALWAYS_INLINE inline Block* TakeParked(FrontCache& front, std::size_t i)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu);
  // The calling thread's cache, made on its first use; null if it cannot be.
  FrontCache* FrontForThisThreadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lends `block` (just registered) to `front`, the calling thread's cache;
  // skipped without memory or while the governor pauses it.
  void LoanLocked(FrontCache& front, Block* block) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `block`'s loan: the allocator's own books take it over as it is
  // (live, or parked: allocated with 0 bytes requested, to be freed next).
  void UnloanLocked(FrontCache& front, Block* block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, front.mu);
  // Ends a parked block's loan and frees it into the free index.
  void ReturnParkedLocked(FrontCache& front, Block* block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, front.mu);
  // Returns the parked blocks of one cache, or of all, to the free index;
  // returns how many.
  std::size_t FlushFrontLocked(FrontCache& front) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, front.mu);
  std::size_t FlushFrontsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `front` is full: returns its oldest parked blocks until `block` fits,
  // then parks it. False if nothing is parked to return (nothing changed),
  // or if the governor pauses the cache (everything parked returned).
  bool ParkEvictingOldestLocked(FrontCache& front, Block* block)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, front.mu);
  // The governor (FrontCache::window_*): counts a free into the full
  // `front`; false when its window just failed, the pause then set.
  static bool KeepsLending(FrontCache& front) ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu);
  // Ends every loan of `front`, folds its counts into ours and forgets it.
  void RetireFrontLocked(FrontCache& front) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Retires the caches whose threads ended (FrontHome::orphans).
  void RetireOrphansLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void AddFrontCounts(const FrontCache& front, MemoryStats& stats, int pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(front.mu);
  // stats_ (pool < 0) or pool_stats_[pool] with every cache's changes.
  MemoryStats StatsWithFrontsLocked(int pool) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<Backend> backend_;
  const DeviceIndex device_;
  const CachingOptions options_;
  const std::size_t capacity_;   // the device's total bytes
  const std::size_t alignment_;  // the device's pointer alignment
  // Every host structure below (blocks, segments, their nodes, the maps and
  // lists) is allocated here: options_.metadata_resource, or new/delete.
  std::pmr::memory_resource* const metadata_;

  mutable Mutex mu_;
  FreeSet small_ ABSL_GUARDED_BY(mu_);
  FreeSet large_ ABSL_GUARDED_BY(mu_);
  LiveMap allocated_ ABSL_GUARDED_BY(mu_);
  Segment* segments_ ABSL_GUARDED_BY(mu_) = nullptr;  // intrusive list, owned
  // The growable segment of the small and the large pool (expandable_segments).
  Segment* expandable_[2] ABSL_GUARDED_BY(mu_) = {nullptr, nullptr};
  // Emptied expandable ranges whose release the backend refused: retried on
  // every release pass and at destruction, never forgotten.
  std::pmr::vector<PmrUniquePtr<ExpandableRange>> retired_ranges_ ABSL_GUARDED_BY(mu_);
  Block* pending_ ABSL_GUARDED_BY(mu_) = nullptr;  // intrusive list of blocks awaiting events
  // Free markers (RMM's scheme, amortised): an event per stream that another
  // stream waits for (or checks) before it takes a block freed there, never
  // the freeing stream itself, which its user may destroy right after the
  // free (a real driver crashes on a stale handle; found on an H200). A
  // marker is recorded on a stream while its caller certainly has it: at a
  // free on it or an allocation on it, and then only for its first free and
  // every kFreesPerMarker frees after (by count, so deterministic schedules
  // replay), so most operations make no runtime call. Another stream takes a
  // block once its stream's marker covers the block's free (free_epoch <=
  // covered); until then it stays with its own stream (at most
  // kFreesPerMarker - 1 blocks a stream), or until a device synchronise (the
  // out-of-memory path, EmptyCache) makes everything takeable.
  struct FreeMarker {
    std::optional<Event> event;
    std::uint64_t frees = 0;    // frees on the stream so far
    std::uint64_t covered = 0;  // frees the last recorded marker follows
  };
  static constexpr std::uint64_t kFreesPerMarker = 4;
  std::pmr::unordered_map<std::uintptr_t, FreeMarker> markers_ ABSL_GUARDED_BY(mu_);
  // Counts a free of `block` on `stream` (alive: the caller frees on it) and
  // records the marker when due; never fails.
  void MarkFreed(Block* block, Stream stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `stream` is alive (the caller allocates or frees on it): records its
  // marker when uncovered frees are due.
  void CoverFreesOn(FreeMarker& marker, Stream stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes sure `stream` has a marker entry with an event, before a free
  // commits (allocation and event creation may fail; nothing changed yet;
  // creating an event names no stream).
  void PrepareMarker(Stream stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a device synchronise nothing is queued anywhere: every free block
  // may go to any stream.
  void ForgetQueuedWork() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Destroys every marker's event (one the runtime refuses goes to the spare
  // pool, destroyed with the allocator) and forgets the markers.
  void DropMarkers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::pmr::vector<Event> spare_events_ ABSL_GUARDED_BY(mu_);
  // Blocks merged away, each with its FreeSet node, reused by NewBlock: a
  // split and merge cost no heap allocation in the steady state.
  static constexpr std::size_t kSpareBlocks = 64;
  std::pmr::vector<Block*> spare_blocks_ ABSL_GUARDED_BY(mu_);
  // The release paths' list of candidates, with room for every segment, so
  // releasing never needs memory (and EmptyCache never fails for want of it).
  std::pmr::vector<Segment*> free_segments_ ABSL_GUARDED_BY(mu_);
  // AllocationRecorder: on once started; the next sequence number; the tag
  // DoAllocate interned for the allocation in progress (read by Register);
  // the interned tags.
  bool recording_ ABSL_GUARDED_BY(mu_) = false;
  std::uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  const std::pmr::string* record_tag_ ABSL_GUARDED_BY(mu_) = nullptr;
  TagInterner tags_ ABSL_GUARDED_BY(mu_);
  std::size_t limit_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  MemoryStats stats_ ABSL_GUARDED_BY(mu_);
  std::array<MemoryStats, 2> pool_stats_ ABSL_GUARDED_BY(mu_);  // small, large
  std::vector<OomCallback> oom_callbacks_ ABSL_GUARDED_BY(mu_);
  // The front caches: this allocator's id in the threads' registries, the
  // home they find it through, whether they serve (options on, not
  // recording), every thread's cache, and the block Register last filed
  // (the one DoAllocate lends).
  const std::uint64_t front_id_;
  const std::shared_ptr<caching_detail::FrontHome> front_home_;
  std::atomic<bool> front_serving_;
  // Reserved bytes are over the limit (it was lowered below what live
  // blocks hold): every free must go to the free index, where the segment
  // it empties is released at once. Read under a cache's lock, after the
  // store that flushes it, so no block is parked once it is set.
  std::atomic<bool> front_over_limit_{false};
  std::pmr::vector<std::shared_ptr<FrontCache>> fronts_ ABSL_GUARDED_BY(mu_);
  Block* last_registered_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CACHING_CACHING_ALLOCATOR_H_
