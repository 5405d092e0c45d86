#include "allocator/host/pinned_host_allocator.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <new>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/node_insert.h"

namespace gpualloc {

namespace {

std::uintptr_t Address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
void* Pointer(std::uintptr_t a) { return reinterpret_cast<void*>(a); }

// Whether what a block leaves of its free range is split off as a range of
// its own (one unit or more), or stays with the block.
bool SplitsOff(std::size_t rest) { return rest >= kPinnedBlockAlignment; }

}  // namespace

PinnedHostAllocator::PinnedHostAllocator(std::shared_ptr<Backend> backend,
                                         PinnedHostOptions options)
    : backend_(std::move(backend)), options_(options) {}

PinnedHostAllocator::~PinnedHostAllocator() {
  Flush(/*release_cache=*/true).IgnoreError();
  std::unordered_map<DeviceIndex, std::vector<Event>> spares;
  {
    MutexLock lock(mu_);
    spares.swap(spare_events_);
  }
  for (const auto& [device, events] : spares) {
    for (Event e : events) DestroyEvent(e);
  }
  MutexLock lock(mu_);
  if (!live_.empty()) {
    std::fprintf(stderr, "PinnedHostAllocator: %zu blocks (%zu bytes) still live at destruction\n",
                 live_.size(), stats_.live_bytes);
  }
  if (stats_.pending_blocks != 0) {
    std::fprintf(stderr, "PinnedHostAllocator: %zu blocks could not be released\n",
                 stats_.pending_blocks);
  }
}

DeviceIndex PinnedHostAllocator::CurrentDevice() const {
  absl::StatusOr<DeviceIndex> d = CallAtBoundary("get device", [&] { return backend_->GetDevice(); });
  return d.ok() ? *d : kHostDevice;
}

// --- public methods: each at the exception boundary ----------------------------

absl::StatusOr<PinnedBlock> PinnedHostAllocator::Allocate(std::size_t bytes, DeviceIndex owner) {
  return CallAtBoundary("pinned host allocator: allocate",
                        [&] { return AllocateImpl(bytes, owner); });
}

absl::Status PinnedHostAllocator::RecordStream(const PinnedBlock& block, Stream stream) {
  return CallAtBoundary("pinned host allocator: record stream",
                        [&] { return RecordStreamImpl(block, stream); });
}

absl::Status PinnedHostAllocator::Deallocate(const PinnedBlock& block) {
  return CallAtBoundary("pinned host allocator: deallocate", [&] { return DeallocateImpl(block); });
}

absl::Status PinnedHostAllocator::Flush(bool release_cache) {
  return CallAtBoundary("pinned host allocator: flush", [&] { return FlushImpl(release_cache); });
}

// --- allocate and free ---------------------------------------------------------------

absl::StatusOr<PinnedBlock> PinnedHostAllocator::AllocateImpl(std::size_t bytes, DeviceIndex owner) {
  if (bytes == 0) return absl::InvalidArgumentError("pinned host allocator: zero-byte allocation");
  const std::optional<std::size_t> rounded = CheckedRoundUp(bytes, kPinnedBlockAlignment);
  if (!rounded) return absl::ResourceExhaustedError("pinned host allocator: size overflows");
  const std::size_t size = *rounded;
  const std::pair<std::size_t, bool> segment_for = SegmentFor(size);
  const std::size_t segment_bytes = segment_for.first;  // not a structured binding:
  const bool small = segment_for.second;                // lambdas below capture it
  if (segment_bytes < size) {
    return absl::ResourceExhaustedError("pinned host allocator: size overflows");
  }
  const DeviceIndex current = CurrentDevice();
  if (current == owner) OnDeviceCurrent(owner);  // the owner is current: its queue can go
  {
    // Blocks whose streams have passed their free are reusable again.
    std::vector<Batch> now;
    ReapInFlight(/*wait=*/false, &now);
    ReleaseAll(now);
  }
  {
    MutexLock lock(mu_);
    if (std::optional<PinnedBlock> hit = TakeCachedLocked(owner, size)) return *hit;
  }
  absl::StatusOr<void*> p =
      CallAtBoundary("host alloc", [&] { return backend_->HostAlloc(owner, segment_bytes); });
  if (!p.ok() && p.status().code() == absl::StatusCode::kResourceExhausted) {
    Flush(/*release_cache=*/true).IgnoreError();  // give the cache back, then retry once
    p = CallAtBoundary("host alloc", [&] { return backend_->HostAlloc(owner, segment_bytes); });
  }
  if (!p.ok()) return p.status();
  const PinnedBlock segment{*p, segment_bytes, owner};
  {
    MutexLock lock(mu_);
    try {
      return AddSegmentLocked(segment, size, small);
    } catch (...) {
      // Could not track it: it goes straight back (below, outside the lock).
    }
  }
  CallAtBoundary("host free", [&] { return backend_->HostFree(owner, segment.ptr); }).IgnoreError();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "pinned host allocator: no host memory to track a %d-byte segment; it was returned",
      segment_bytes));
}

std::pair<std::size_t, bool> PinnedHostAllocator::SegmentFor(std::size_t size) const {
  if (size <= options_.small_request_max) {
    return {std::max(size, options_.small_segment_bytes), true};
  }
  const std::size_t round = std::max(options_.large_segment_round, kPinnedBlockAlignment);
  return {CheckedRoundUp(size, round).value_or(0), false};
}

// --- segments: carving, merging, retiring -------------------------------------------

std::optional<PinnedBlock> PinnedHostAllocator::TakeCachedLocked(DeviceIndex owner,
                                                                std::size_t size) {
  auto o_it = owners_.find(owner);
  if (o_it == owners_.end()) return std::nullopt;
  Owner& o = o_it->second;
  FreeIndex& index = o.free_index(size <= options_.small_request_max);
  auto fit = index.lower_bound({size, 0});
  if (fit == index.end()) return std::nullopt;
  const std::uintptr_t at = fit->second;
  auto range = o.ranges.find(at);  // exists: every free range is indexed by its range
  Range& r = range->second;
  const bool wholly_free = r.bytes == r.segment->bytes;  // that large: the whole segment
  const std::size_t rest = r.bytes - size;
  const bool split = SplitsOff(rest);
  const PinnedBlock block{Pointer(at), split ? size : r.bytes, owner};
  // What may throw first; then nothing that can. The live entry is
  // emplaced directly: an unordered_map's single insert that throws has no
  // effect, and a node made apart would cost a scratch table per call.
  std::map<std::uintptr_t, Range>::node_type tail;
  if (split) {
    if (o.spare.empty()) {
      tail = MakeNode(o.ranges, at + size, Range{rest, true, r.small, r.segment});
    } else {
      tail = std::move(o.spare);
      tail.key() = at + size;
      tail.mapped() = Range{rest, true, r.small, r.segment};
    }
  }
  live_.try_emplace(block.ptr, LiveBlock{block, {}});
  FreeIndex::node_type entry = index.extract(fit);
  if (split) {
    entry.value() = {rest, at + size};  // the range's index node now names its tail
    index.insert(std::move(entry));
    o.ranges.insert(std::move(tail));
    r.bytes = size;
  }
  r.free = false;
  if (wholly_free) o.in_use.splice(o.in_use.end(), lru_, r.segment);
  stats_.cached_bytes -= block.bytes;
  stats_.live_bytes += block.bytes;
  ++stats_.hits;
  return block;
}

PinnedBlock PinnedHostAllocator::AddSegmentLocked(const PinnedBlock& segment, std::size_t size,
                                                  bool small) {
  const std::size_t rest = segment.bytes - size;
  const bool split = SplitsOff(rest);
  const PinnedBlock block{segment.ptr, split ? size : segment.bytes, segment.owner};
  const std::uintptr_t at = Address(segment.ptr);
  // What may throw first; then nothing that can.
  Owner& o = owners_[segment.owner];
  std::list<PinnedBlock> node{segment};
  auto head = MakeNode(o.ranges, at, Range{block.bytes, false, small, node.begin()});
  std::map<std::uintptr_t, Range>::node_type tail;
  FreeIndex::node_type entry;
  if (split) {
    tail = MakeNode(o.ranges, at + size, Range{rest, true, small, node.begin()});
    entry = MakeNode(o.free_index(small), rest, at + size);
  }
  live_.try_emplace(block.ptr, LiveBlock{block, {}});  // the last that may throw
  o.in_use.splice(o.in_use.end(), node);
  o.ranges.insert(std::move(head));
  if (split) {
    o.ranges.insert(std::move(tail));
    o.free_index(small).insert(std::move(entry));
  }
  stats_.cached_bytes += segment.bytes - block.bytes;
  stats_.live_bytes += block.bytes;
  stats_.reserved_bytes += segment.bytes;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  ++stats_.misses;
  return block;
}

void PinnedHostAllocator::CacheLocked(const PinnedBlock& block) {
  Owner& o = owners_.find(block.owner)->second;  // exists: the block was carved under it
  auto range = o.ranges.find(Address(block.ptr));  // exists: the block is live or in flight
  Range& r = range->second;
  FreeIndex& index = o.free_index(r.small);
  auto mergeable = [&](auto it) {
    if (it == o.ranges.end()) return false;
    return it->second.free && it->second.segment == r.segment;
  };
  auto next = std::next(range);
  auto prev = range == o.ranges.begin() ? o.ranges.end() : std::prev(range);
  const bool merge_next = mergeable(next);
  const bool merge_prev = mergeable(prev);
  // The merged range's index node: a free neighbour's, taken out of the
  // index; only a block with none needs a new one, made before anything
  // changes (the one step that may throw).
  FreeIndex::node_type entry;
  if (merge_next) {
    entry = index.extract({next->second.bytes, next->first});
  } else if (merge_prev) {
    entry = index.extract({prev->second.bytes, prev->first});
  } else {
    entry = MakeNode(index, r.bytes, range->first);
  }
  stats_.cached_bytes += r.bytes;
  std::uintptr_t at = range->first;
  std::size_t bytes = r.bytes;
  if (merge_next) {
    bytes += next->second.bytes;
    o.spare = o.ranges.extract(next);
  }
  if (merge_prev) {
    if (merge_next) index.erase({prev->second.bytes, prev->first});  // its node was not taken
    at = prev->first;
    bytes += prev->second.bytes;
    o.spare = o.ranges.extract(range);
    range = prev;
  }
  range->second.bytes = bytes;
  range->second.free = true;
  entry.value() = {bytes, at};
  index.insert(std::move(entry));
  const std::list<PinnedBlock>::iterator segment = range->second.segment;
  if (bytes == segment->bytes) {  // that large: the whole segment, wholly free
    lru_.splice(lru_.end(), o.in_use, segment);  // most recently freed last
  }
}

void PinnedHostAllocator::RetireLocked(std::list<PinnedBlock>::iterator it) {
  const PinnedBlock segment = *it;
  Owner& o = owners_.find(segment.owner)->second;  // exists: the segment was made under it
  auto range = o.ranges.find(Address(segment.ptr));  // its one range: wholly free
  o.free_index(range->second.small).erase({segment.bytes, range->first});
  o.ranges.erase(range);
  // Owner not current: it waits, never dropped. Spliced: nothing allocates.
  o.pending.splice(o.pending.end(), lru_, it);
  stats_.cached_bytes -= segment.bytes;
  ++stats_.pending_blocks;
  stats_.max_pending_seen = std::max(stats_.max_pending_seen, o.pending.size());
}

absl::Status PinnedHostAllocator::RecordStreamImpl(const PinnedBlock& block, Stream stream) {
  MutexLock lock(mu_);
  auto it = live_.find(block.ptr);
  if (it == live_.end() || it->second.block.owner != block.owner) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pinned host allocator: RecordStream on %p (owner %d), which is not a live block",
        block.ptr, block.owner));
  }
  for (Stream s : it->second.streams) {
    if (s == stream) return absl::OkStatus();
  }
  it->second.streams.push_back(stream);  // a throw leaves the block as it was
  return absl::OkStatus();
}

absl::Status PinnedHostAllocator::DeallocateImpl(const PinnedBlock& block) {
  auto not_live = [&] {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pinned host allocator: %p (owner %d) is not a live block (foreign pointer, double "
        "free, or the wrong owner)",
        block.ptr, block.owner));
  };
  std::vector<Stream> streams;
  {
    MutexLock lock(mu_);
    auto it = live_.find(block.ptr);
    if (it == live_.end() || it->second.block.owner != block.owner) return not_live();
    streams = it->second.streams;
  }
  // Order the reuse after the streams that used the block: an event on each
  // (outside the lock: these are runtime calls), or a host wait.
  std::vector<Event> events;
  events.reserve(streams.size());
  std::uint64_t host_waits = 0;
  for (Stream s : streams) {
    absl::StatusOr<Event> e = AcquireEvent(s.device);
    if (e.ok() &&
        CallAtBoundary("event record", [&] { return backend_->RecordEvent(*e, s); }).ok()) {
      events.push_back(*e);
      continue;
    }
    if (e.ok()) RecycleEvents({*e});
    absl::Status synced =
        CallAtBoundary("stream synchronize", [&] { return backend_->SynchronizeStream(s); });
    if (!synced.ok()) {
      RecycleEvents(events);
      return absl::Status(synced.code(),
                          absl::StrFormat("pinned host allocator: cannot order the free of %p "
                                          "after stream %d: %s",
                                          block.ptr, s.handle, synced.message()));
    }
    ++host_waits;
  }
  std::vector<Batch> now;
  absl::Status refused = absl::OkStatus();
  {
    MutexLock lock(mu_);
    stats_.host_waits += host_waits;
    auto it = live_.find(block.ptr);
    if (it == live_.end() || it->second.block.owner != block.owner) {  // a racing double free
      refused = not_live();
    } else {
      const PinnedBlock live = it->second.block;
      try {
        if (events.empty()) {
          CacheLocked(live);  // bookkeeping only, no device needed, any thread
        } else {
          in_flight_.push_back(InFlight{next_in_flight_id_, live, events});
          ++next_in_flight_id_;
          stats_.stream_waits += events.size();
          ++stats_.in_flight_blocks;
          events.clear();  // owned by the in-flight entry now
        }
      } catch (const std::bad_alloc&) {
        refused = absl::ResourceExhaustedError(absl::StrFormat(
            "pinned host allocator: no host memory to cache %p; it stays allocated", block.ptr));
      }
      if (refused.ok()) {
        live_.erase(it);
        stats_.live_bytes -= live.bytes;
        EvictLocked(&now);
      }
    }
  }
  RecycleEvents(events);  // what no in-flight entry took
  ReleaseAll(now);
  return refused;
}

absl::StatusOr<Event> PinnedHostAllocator::AcquireEvent(DeviceIndex device) {
  {
    MutexLock lock(mu_);
    auto it = spare_events_.find(device);
    if (it != spare_events_.end() && !it->second.empty()) {
      const Event e = it->second.back();
      it->second.pop_back();
      return e;
    }
  }
  return CallAtBoundary("event create", [&] { return backend_->CreateEvent(device); });
}

void PinnedHostAllocator::RecycleEvents(const std::vector<Event>& events) noexcept {
  // Few per call (one per recorded stream): one short lock each.
  for (Event e : events) {
    bool kept = false;
    {
      MutexLock lock(mu_);
      try {
        std::vector<Event>& pool = spare_events_[e.device];
        if (pool.size() < kSpareEventsPerDevice) {
          pool.push_back(e);
          kept = true;
        }
      } catch (...) {
        // No room to keep it: destroyed below.
      }
    }
    if (!kept) DestroyEvent(e);  // beyond the bound: a runtime call, outside the lock
  }
}

void PinnedHostAllocator::DestroyEvent(Event event) noexcept {
  CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(event); }).IgnoreError();
}

void PinnedHostAllocator::ReapInFlight(bool wait, std::vector<Batch>* now) {
  // The entries to look at and their events, copied: queried outside the
  // lock. Entries are named by id: meanwhile another thread may reap one,
  // and its block be reused and freed again as a new entry.
  std::vector<std::pair<std::uint64_t, std::vector<Event>>> look;
  {
    MutexLock lock(mu_);
    if (in_flight_.empty()) return;
    look.reserve(in_flight_.size());
    for (const InFlight& f : in_flight_) look.emplace_back(f.id, f.events);
  }
  std::vector<std::uint64_t> done;
  done.reserve(look.size());
  std::size_t finished_events = 0;
  for (const auto& [id, events] : look) {
    bool complete = true;
    for (Event e : events) {
      if (wait) {
        complete = CallAtBoundary("event synchronize", [&] {
                     return backend_->SynchronizeEvent(e);
                   }).ok();
      } else {
        absl::StatusOr<bool> q =
            CallAtBoundary("event query", [&] { return backend_->QueryEvent(e); });
        complete = q.ok() && *q;
      }
      if (!complete) break;
    }
    if (complete) {
      done.push_back(id);
      finished_events += events.size();
    }
  }
  std::vector<Event> finished;
  finished.reserve(finished_events);
  {
    MutexLock lock(mu_);
    for (std::uint64_t id : done) {
      auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                             [&](const InFlight& f) { return f.id == id; });
      if (it == in_flight_.end()) continue;  // another thread reaped it
      CacheLocked(it->block);  // if this throws, it (and the rest) stay in flight
      finished.insert(finished.end(), it->events.begin(), it->events.end());  // reserved
      in_flight_.erase(it);
      --stats_.in_flight_blocks;
    }
    EvictLocked(now);
  }
  RecycleEvents(finished);
}

// --- eviction and release ------------------------------------------------------------

void PinnedHostAllocator::EvictLocked(std::vector<Batch>* now) {
  while (stats_.cached_bytes > options_.cache_limit_bytes && !lru_.empty()) {
    RetireLocked(lru_.begin());
  }
  // The current device, asked only when some queue is not empty: a runtime
  // call the common free (nothing queued) does without.
  std::optional<DeviceIndex> current;
  // Release now what we can: queues of the current device, and any queue
  // that reached its bound (one device switch for the whole batch). Refused
  // releases wait for Flush or the owner becoming current: never retried here.
  for (auto& [owner, o] : owners_) {
    if (o.pending.empty()) continue;
    if (!current) current = CurrentDevice();
    if (owner != *current && o.pending.size() < options_.max_pending_per_owner) continue;
    const std::size_t n = o.pending.size();
    try {
      now->emplace_back(owner, std::list<PinnedBlock>());  // on a throw the queue stays
    } catch (const std::bad_alloc&) {
      break;
    }
    now->back().second.splice(now->back().second.end(), o.pending);  // never allocates
    stats_.pending_blocks -= n;
  }
}

void PinnedHostAllocator::ReleaseAll(std::vector<Batch>& batches) noexcept {
  for (auto& [owner, blocks] : batches) ReleaseBatch(owner, std::move(blocks));
  batches.clear();
}

void PinnedHostAllocator::ReleaseBatch(DeviceIndex owner, std::list<PinnedBlock> blocks) noexcept {
  if (blocks.empty()) return;
  const DeviceIndex previous = CurrentDevice();
  bool switched = false;
  if (previous != owner) {
    switched = CallAtBoundary("set device", [&] { return backend_->SetDevice(owner); }).ok();
  }
  std::list<PinnedBlock> refused;
  for (auto it = blocks.begin(); it != blocks.end();) {
    auto next = std::next(it);
    if (!CallAtBoundary("host free", [&] { return backend_->HostFree(owner, it->ptr); }).ok()) {
      refused.splice(refused.end(), blocks, it);  // kept, retried by Flush
    }
    it = next;
  }
  if (switched) {
    CallAtBoundary("set device", [&] { return backend_->SetDevice(previous); }).IgnoreError();
  }
  std::size_t released_bytes = 0;
  for (const PinnedBlock& b : blocks) released_bytes += b.bytes;
  MutexLock lock(mu_);
  if (switched) ++stats_.batch_switches;
  stats_.releases += blocks.size();
  stats_.reserved_bytes -= released_bytes;
  stats_.failed_releases += refused.size();
  stats_.pending_blocks += refused.size();
  stats_.refused_blocks += refused.size();
  auto o = owners_.find(owner);  // exists: its blocks came from it
  if (o != owners_.end()) {
    o->second.refused.splice(o->second.refused.end(), refused);
  } else if (!refused.empty()) {
    std::fprintf(stderr, "PinnedHostAllocator: %zu refused blocks of unknown owner %d\n",
                 refused.size(), owner);
  }
}

void PinnedHostAllocator::OnDeviceCurrent(DeviceIndex owner) noexcept {
  std::list<PinnedBlock> batch;
  {
    MutexLock lock(mu_);
    auto it = owners_.find(owner);
    if (it == owners_.end()) return;
    // The queue, and the releases refused before: the owner is current now.
    stats_.refused_blocks -= it->second.refused.size();
    batch.splice(batch.end(), it->second.pending);
    batch.splice(batch.end(), it->second.refused);
    stats_.pending_blocks -= batch.size();
  }
  ReleaseBatch(owner, std::move(batch));
}

absl::Status PinnedHostAllocator::FlushImpl(bool release_cache) {
  std::vector<Batch> batches;
  // Blocks still in flight come back once their streams pass their frees.
  ReapInFlight(/*wait=*/true, &batches);
  {
    MutexLock lock(mu_);
    if (release_cache) {
      while (!lru_.empty()) RetireLocked(lru_.begin());
    }
    for (auto& [owner, o] : owners_) {
      std::list<PinnedBlock> batch;
      const std::size_t refused = o.refused.size();
      batch.splice(batch.end(), o.pending);
      batch.splice(batch.end(), o.refused);  // retried here
      if (batch.empty()) continue;
      const std::size_t n = batch.size();
      try {
        batches.emplace_back(owner, std::move(batch));  // strong: on a throw, `batch` is intact
      } catch (const std::bad_alloc&) {
        o.pending.splice(o.pending.end(), batch);  // still queued; the next flush retries
        break;
      }
      stats_.refused_blocks -= refused;
      stats_.pending_blocks -= n;
    }
  }
  ReleaseAll(batches);
  MutexLock lock(mu_);
  if (stats_.in_flight_blocks != 0) {
    return absl::InternalError(absl::StrFormat(
        "pinned host allocator: %d freed blocks still wait for their streams' events",
        stats_.in_flight_blocks));
  }
  if (stats_.pending_blocks != 0) {
    return absl::InternalError(absl::StrFormat(
        "pinned host allocator: %d blocks could not be released yet; they stay queued",
        stats_.pending_blocks));
  }
  return absl::OkStatus();
}

PinnedHostStats PinnedHostAllocator::stats() const {
  MutexLock lock(mu_);
  PinnedHostStats s = stats_;
  s.free_segments = lru_.size();
  return s;
}

}  // namespace gpualloc
