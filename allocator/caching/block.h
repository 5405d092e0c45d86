// Internal bookkeeping of CachingAllocator: segments (upstream allocations)
// split into blocks. Not part of the public API. All of it lives in the
// allocator's metadata resource (CachingOptions::metadata_resource).
//
//   Segment [base ............................................ base+size)
//           | Block (allocated) | Block (free, stream 1) | Block (allocated) |
//             prev/next link neighbours within the segment, in address order.
#ifndef GPUALLOC_ALLOCATOR_CACHING_BLOCK_H_
#define GPUALLOC_ALLOCATOR_CACHING_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "allocator/backend/types.h"
#include "allocator/caching/expandable_range.h"
#include "allocator/common/pmr_object.h"
#include "allocator/stats/memory_snapshot.h"

namespace gpualloc::caching_detail {

struct Block;
struct Segment;
class FrontCache;

// Free blocks of a pool, best fit first: by stream, then size, then address.
struct BlockLess {
  bool operator()(const Block* a, const Block* b) const;
};
using FreeSet = std::pmr::set<Block*, BlockLess>;
// Live blocks by address. A node-based map: a block carries its own node
// while it is not live, so the no-throw commit of an allocation never
// allocates, and an insert that does throw (the standard's strong guarantee
// for single-element inserts) leaves the map as it was.
using LiveMap = std::pmr::unordered_map<std::uintptr_t, Block*>;

struct Block {
  Block() = default;  // a search probe, never filed
  explicit Block(std::pmr::memory_resource* metadata)
      : stream_uses(metadata), pending_events(metadata) {}

  std::uintptr_t address = 0;
  std::size_t size = 0;
  std::size_t requested = 0;  // while allocated
  Stream stream;              // the stream that may use it next without waiting
  BlockState state = BlockState::kFree;
  Segment* segment = nullptr;
  Block* prev = nullptr;  // neighbours in the segment
  Block* next = nullptr;
  // Streams besides `stream` that use it (RecordStream), and, once freed,
  // the events that must complete before it is free.
  std::pmr::vector<Stream> stream_uses;
  std::pmr::vector<Event> pending_events;
  // While free: the freeing stream's free count when this memory was last
  // freed on it (see CachingAllocator's free markers); another stream may
  // take the block once that stream's marker covers it. 0: nothing is queued
  // on it anywhere (fresh memory, or the device was synchronised since).
  std::uint64_t free_epoch = 0;
  Block* pending_prev = nullptr;  // intrusive list of blocks awaiting events
  Block* pending_next = nullptr;
  // The block's own node for its pool's FreeSet, held while the block is not
  // in the set, so moving it in and out never allocates (and never throws).
  FreeSet::node_type node;
  // Its node for the LiveMap, held while the block is not live, and for a
  // front cache's map of loans, held while it is not on loan.
  LiveMap::node_type live_node;
  LiveMap::node_type front_node;
  // While live, with recording on (AllocationRecorder): its order (0: not
  // recorded) and its interned allocation tag (null: none).
  std::uint64_t sequence = 0;
  const std::pmr::string* tag = nullptr;
  // While on loan to a thread's front cache (front_cache.h): that cache
  // (set and cleared under the allocator's lock and the cache's), and the
  // requested bytes the allocator's stats counted at the loan. Under the
  // cache's lock: whether its user freed it into the cache (`parked`,
  // `requested` then 0); `requested` is then the cache's to change.
  FrontCache* front = nullptr;
  bool parked = false;
  std::size_t counted_requested = 0;

  bool is_split() const { return prev != nullptr || next != nullptr; }
};

// A free block's place in its FreeSet: stream, then size, then address.
using FreeKey = std::tuple<std::uintptr_t, std::size_t, std::uintptr_t>;
inline FreeKey KeyOf(const Block& b) { return {b.stream.handle, b.size, b.address}; }

inline bool BlockLess::operator()(const Block* a, const Block* b) const {
  return KeyOf(*a) < KeyOf(*b);
}

struct Segment {
  std::uintptr_t address = 0;
  std::size_t size = 0;  // mapped bytes, for an expandable segment
  bool small_pool = false;
  // Set for an expandable segment: its address range and mapped chunks.
  PmrUniquePtr<ExpandableRange> range;
  std::uint64_t last_used = 0;
  Block* head = nullptr;     // first block, in address order
  Segment* prev = nullptr;   // intrusive list of all segments
  Segment* next = nullptr;
};

using BlockPtr = PmrUniquePtr<Block>;
using SegmentPtr = PmrUniquePtr<Segment>;

}  // namespace gpualloc::caching_detail

#endif  // GPUALLOC_ALLOCATOR_CACHING_BLOCK_H_
