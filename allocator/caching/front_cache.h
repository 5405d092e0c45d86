// The per-thread front cache of CachingAllocator (CachingOptions::
// front_cache_blocks). Internal; docs/design.md ("Front cache") has the
// whole picture.
//
// A thread's front cache of one allocator holds the blocks *on loan* to the
// thread: blocks the allocator gave it, which stay allocated in the
// allocator's own books (its live map, its segments) for as long as the loan
// lasts. A loaned block is either live (its user holds it) or parked (its
// user freed it on the stream it was allocated on, with no other stream
// recorded on it). The thread frees a live loaned block by parking it, and
// allocates by taking a parked block of the same rounded size on the same
// stream: both under the cache's own lock alone, which only the allocator's
// maintenance (flushes, stats, snapshots) ever contends for. Everything
// else (a free from another thread, a wrong size, a parked block freed
// again, a full cache) takes the allocator's lock and sees the loan there.
//
// Stream order: a parked block is only reused on the stream it was freed
// on, which is stream-ordered by itself; flushed back to the allocator, it
// stays with that stream until the device is synchronised (as a free with
// no free marker does).
//
// Lifetime: a cache lives while its thread or its allocator holds it. A
// thread's end only marks it orphaned; the allocator retires it (every loan
// ends, parked blocks return to the free index) under its own lock, at its
// next slow path or flush, or when it is destroyed.
//
// Locks, in order: the allocator's mutex, then FrontCache::mu (several at
// once only in list order: AllFrontsLocked). The fast paths hold only their
// own FrontCache::mu.
#ifndef GPUALLOC_ALLOCATOR_CACHING_FRONT_CACHE_H_
#define GPUALLOC_ALLOCATOR_CACHING_FRONT_CACHE_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <vector>

#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "allocator/caching/block.h"
#include "allocator/caching/caching_options.h"
#include "allocator/common/mutex.h"
#include "allocator/common/spin_lock.h"

namespace gpualloc::caching_detail {

// What a thread's cache changed in the allocator's stats, per pool, beyond
// what the allocator's own counters (which count every loaned block as
// allocated, with its counted_requested) say.
struct FrontCounts {
  std::int64_t parked_bytes = 0;
  std::int64_t parked_blocks = 0;
  // Sum over loaned blocks of requested - counted_requested.
  std::int64_t requested_delta = 0;
  // The allocations served from the cache (cache hits, each one more
  // active block in total) and the bytes they added to the totals.
  std::uint64_t hits = 0;
  std::uint64_t allocated_total = 0;
  std::uint64_t requested_total = 0;
};

// Shared by an allocator and every thread's cache of it (so it outlives
// both): how many caches their threads left since the allocator last
// retired them. A thread's end takes no lock: it may be a thread of a
// deterministic schedule that has already left it.
struct FrontHome {
  std::atomic<std::size_t> orphans{0};
};

// The governor's rule (FrontCache::window_*): a window of kFrontWindow
// frees into a full cache fails when fewer than one hit came per
// kFrontEvictionsPerHit of them; the cache then returns what it parks and
// lends nothing for kFrontPauseLoans allocations, twice that after each
// further failed window in a row, up to kFrontPauseLoans <<
// kFrontMaxPauseDoublings. Counts, not time: deterministic schedules replay.
inline constexpr std::uint32_t kFrontWindow = 64;
inline constexpr std::uint32_t kFrontEvictionsPerHit = 4;
inline constexpr std::uint64_t kFrontPauseLoans = 1024;
inline constexpr std::uint32_t kFrontMaxPauseDoublings = 4;

class FrontCache {
 public:
  FrontCache(std::uint64_t owner_id, std::shared_ptr<FrontHome> home,
             std::pmr::memory_resource* metadata)
      : owner_id(owner_id), home(std::move(home)), loaned(LiveMap::allocator_type(metadata)) {}

  const std::uint64_t owner_id;  // the allocator's NewFrontOwnerId()
  const std::shared_ptr<FrontHome> home;
  SpinLock mu;
  // The blocks on loan to this thread, by address: entries are added and
  // removed under the allocator's lock as well (so their nodes come from its
  // metadata resource under its lock); the fast paths only look them up.
  LiveMap loaned ABSL_GUARDED_BY(mu);
  // The block the cache last handed out, while still on loan to it: a pair
  // frees it next, found without a lookup in `loaned`.
  Block* last_served ABSL_GUARDED_BY(mu) = nullptr;
  // Parked blocks, oldest first.
  std::array<Block*, CachingOptions::kMaxFrontCacheBlocks> parked ABSL_GUARDED_BY(mu) = {};
  std::size_t parked_count ABSL_GUARDED_BY(mu) = 0;
  std::size_t parked_bytes ABSL_GUARDED_BY(mu) = 0;
  // parked_count == 0, for its thread to read without the lock: only its
  // thread parks, so when it reads true, nothing is parked.
  std::atomic<bool> nothing_parked{true};
  std::array<FrontCounts, 2> counts ABSL_GUARDED_BY(mu);  // small pool, large pool
  // The governor: a cache whose parked blocks mostly go back unused (sizes
  // that do not come back while they are parked) stops lending for a while,
  // so such a thread pays what it would pay without a cache. Counted per
  // window of kFrontWindow frees into a full cache (each sends a parked
  // block back): the hits meanwhile, and the windows in a row that failed.
  // Its thread's alone (only its own allocations and frees count or lend):
  // no lock.
  std::uint32_t window_evictions = 0;
  std::uint32_t window_hits = 0;
  std::uint32_t failed_windows = 0;
  std::uint64_t loans_to_skip = 0;  // the pause: allocations not lent
  // Set when its thread ended; the allocator then retires it under its own
  // lock (its next slow path or flush). `retired`: that happened, or the
  // allocator was destroyed.
  std::atomic<bool> orphaned{false};
  std::atomic<bool> retired{false};
};

// Holds the lock of every cache in `fronts` for its scope: a view of all of
// them at one instant (stats, snapshots). `fronts` must not change meanwhile
// (the allocator's lock guards it).
class AllFrontsLocked {
 public:
  explicit AllFrontsLocked(const std::pmr::vector<std::shared_ptr<FrontCache>>& fronts)
      ABSL_NO_THREAD_SAFETY_ANALYSIS : fronts_(fronts) {
    for (const std::shared_ptr<FrontCache>& front : fronts_) front->mu.lock();
  }
  ~AllFrontsLocked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const std::shared_ptr<FrontCache>& front : fronts_) front->mu.unlock();
  }
  AllFrontsLocked(const AllFrontsLocked&) = delete;
  AllFrontsLocked& operator=(const AllFrontsLocked&) = delete;

 private:
  const std::pmr::vector<std::shared_ptr<FrontCache>>& fronts_;
};

// A process-unique id for an allocator with front caches: addresses are
// reused, ids never.
std::uint64_t NewFrontOwnerId() noexcept;

// The calling thread's last-used cache and its allocator's id (constinit:
// read without a thread-local wrapper call).
extern constinit thread_local std::uint64_t last_front_owner_id;
extern constinit thread_local FrontCache* last_front;
FrontCache* FindThisThreadsFront(std::uint64_t owner_id) noexcept;

// The calling thread's cache of the allocator `owner_id`, or null. Two
// thread-local loads when it is the thread's last-used allocator.
inline FrontCache* ThisThreadsFront(std::uint64_t owner_id) noexcept {
  if (ABSL_PREDICT_TRUE(last_front_owner_id == owner_id)) return last_front;
  return FindThisThreadsFront(owner_id);
}

// Makes `front` the calling thread's cache of its allocator until the
// thread ends, when it is marked orphaned for its allocator to retire. False if
// that cannot be arranged (no memory, the thread is ending): then the
// caller must not use it.
bool AdoptForThisThread(std::shared_ptr<FrontCache> front) noexcept;

}  // namespace gpualloc::caching_detail

#endif  // GPUALLOC_ALLOCATOR_CACHING_FRONT_CACHE_H_
