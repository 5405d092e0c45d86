#include "allocator/host/pinned_host_allocator.h"

#include <bit>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/exception_boundary.h"

namespace gpualloc {

std::size_t PinnedRoundUp(std::size_t bytes) {
  if (bytes <= 4096) return 4096;
  const int exponent = 63 - std::countl_zero(bytes);  // 2^exponent <= bytes
  const std::size_t step = std::size_t{1} << (exponent - 3);
  return CheckedRoundUp(bytes, step).value_or(bytes);
}

PinnedHostAllocator::PinnedHostAllocator(std::shared_ptr<Backend> backend,
                                         PinnedHostOptions options)
    : backend_(std::move(backend)), options_(options) {}

PinnedHostAllocator::~PinnedHostAllocator() {
  Flush(/*release_cache=*/true).IgnoreError();
  std::lock_guard<Mutex> lock(mu_);
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

absl::StatusOr<PinnedBlock> PinnedHostAllocator::Allocate(std::size_t bytes, DeviceIndex owner) {
  if (bytes == 0) return absl::InvalidArgumentError("pinned host allocator: zero-byte allocation");
  const std::size_t size = PinnedRoundUp(bytes);
  if (size < bytes) return absl::ResourceExhaustedError("pinned host allocator: size overflows");
  const DeviceIndex current = CurrentDevice();
  if (current == owner) OnDeviceCurrent(owner);  // the owner is current: its queue can go
  {
    // Blocks whose streams have passed their free are reusable again.
    std::vector<std::pair<DeviceIndex, std::vector<PinnedBlock>>> now;
    ReapInFlight(/*wait=*/false, &now);
    for (auto& [o, blocks] : now) ReleaseBatch(o, std::move(blocks));
  }
  {
    std::lock_guard<Mutex> lock(mu_);
    live_.reserve(live_.size() + 1);
    Owner& o = owners_[owner];
    // The best-fitting cached block, if it wastes at most 1/8 more.
    auto it = o.by_size.lower_bound(size);
    if (it != o.by_size.end() && it->first - size <= size / 8) {
      PinnedBlock block = *it->second;
      lru_.erase(it->second);
      o.by_size.erase(it);
      stats_.cached_bytes -= block.bytes;
      stats_.live_bytes += block.bytes;
      ++stats_.hits;
      live_.emplace(block.ptr, LiveBlock{block, {}});
      return block;
    }
  }
  absl::StatusOr<void*> p =
      CallAtBoundary("host alloc", [&] { return backend_->HostAlloc(owner, size); });
  if (!p.ok() && p.status().code() == absl::StatusCode::kResourceExhausted) {
    Flush(/*release_cache=*/true).IgnoreError();  // give the cache back, then retry once
    p = CallAtBoundary("host alloc", [&] { return backend_->HostAlloc(owner, size); });
  }
  if (!p.ok()) return p.status();
  std::lock_guard<Mutex> lock(mu_);
  PinnedBlock block{*p, size, owner};
  try {
    live_.emplace(block.ptr, LiveBlock{block, {}});
  } catch (...) {
    CallAtBoundary("host free", [&] { return backend_->HostFree(owner, block.ptr); }).IgnoreError();
    throw;
  }
  stats_.live_bytes += size;
  ++stats_.misses;
  return block;
}

absl::Status PinnedHostAllocator::RecordStream(const PinnedBlock& block, Stream stream) {
  std::lock_guard<Mutex> lock(mu_);
  auto it = live_.find(block.ptr);
  if (it == live_.end() || it->second.block.owner != block.owner) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pinned host allocator: RecordStream on %p (owner %d), which is not a live block",
        block.ptr, block.owner));
  }
  for (Stream s : it->second.streams) {
    if (s == stream) return absl::OkStatus();
  }
  it->second.streams.push_back(stream);
  return absl::OkStatus();
}

absl::Status PinnedHostAllocator::Deallocate(const PinnedBlock& block) {
  auto not_live = [&] {
    return absl::InvalidArgumentError(absl::StrFormat(
        "pinned host allocator: %p (owner %d) is not a live block (foreign pointer, double "
        "free, or the wrong owner)",
        block.ptr, block.owner));
  };
  std::vector<Stream> streams;
  {
    std::lock_guard<Mutex> lock(mu_);
    auto it = live_.find(block.ptr);
    if (it == live_.end() || it->second.block.owner != block.owner) return not_live();
    streams = it->second.streams;
  }
  // Order the reuse after the streams that used the block: an event on each
  // (outside the lock: these are runtime calls), or a host wait.
  std::vector<Event> events;
  std::uint64_t host_waits = 0;
  for (Stream s : streams) {
    absl::StatusOr<Event> e =
        CallAtBoundary("event create", [&] { return backend_->CreateEvent(s.device); });
    if (e.ok() &&
        CallAtBoundary("event record", [&] { return backend_->RecordEvent(*e, s); }).ok()) {
      events.push_back(*e);
      continue;
    }
    if (e.ok()) DestroyEvents({*e});
    absl::Status synced =
        CallAtBoundary("stream synchronize", [&] { return backend_->SynchronizeStream(s); });
    if (!synced.ok()) {
      DestroyEvents(events);
      return absl::Status(synced.code(),
                          absl::StrFormat("pinned host allocator: cannot order the free of %p "
                                          "after stream %d: %s",
                                          block.ptr, s.handle, synced.message()));
    }
    ++host_waits;
  }
  std::vector<std::pair<DeviceIndex, std::vector<PinnedBlock>>> now;
  {
    std::lock_guard<Mutex> lock(mu_);
    stats_.host_waits += host_waits;
    auto it = live_.find(block.ptr);
    if (it == live_.end() || it->second.block.owner != block.owner) {  // a racing double free
      DestroyEvents(events);
      return not_live();
    }
    const PinnedBlock live = it->second.block;
    if (events.empty()) {
      CacheLocked(live);  // bookkeeping only, no device needed, any thread
    } else {
      in_flight_.push_back(InFlight{live, std::move(events)});
      stats_.stream_waits += in_flight_.back().events.size();
      ++stats_.in_flight_blocks;
    }
    live_.erase(it);
    stats_.live_bytes -= live.bytes;
    EvictLocked(&now);
  }
  for (auto& [owner, blocks] : now) ReleaseBatch(owner, std::move(blocks));
  return absl::OkStatus();
}

void PinnedHostAllocator::CacheLocked(const PinnedBlock& block) {
  lru_.push_back(block);
  try {
    owners_[block.owner].by_size.emplace(block.bytes, std::prev(lru_.end()));
  } catch (...) {
    lru_.pop_back();
    throw;
  }
  stats_.cached_bytes += block.bytes;
}

void PinnedHostAllocator::DestroyEvents(const std::vector<Event>& events) {
  for (Event e : events) {
    CallAtBoundary("event destroy", [&] { return backend_->DestroyEvent(e); }).IgnoreError();
  }
}

void PinnedHostAllocator::ReapInFlight(
    bool wait, std::vector<std::pair<DeviceIndex, std::vector<PinnedBlock>>>* now) {
  std::vector<InFlight> taken;
  {
    std::lock_guard<Mutex> lock(mu_);
    if (in_flight_.empty()) return;
    taken.swap(in_flight_);
  }
  // Runtime calls outside the lock; a block is done when every event is.
  std::vector<InFlight> done, waiting;
  for (InFlight& f : taken) {
    bool complete = true;
    for (Event e : f.events) {
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
    (complete ? done : waiting).push_back(std::move(f));
  }
  for (const InFlight& f : done) DestroyEvents(f.events);
  std::lock_guard<Mutex> lock(mu_);
  for (InFlight& f : waiting) in_flight_.push_back(std::move(f));
  for (const InFlight& f : done) {
    CacheLocked(f.block);
    --stats_.in_flight_blocks;
  }
  EvictLocked(now);
}

void PinnedHostAllocator::EvictLocked(
    std::vector<std::pair<DeviceIndex, std::vector<PinnedBlock>>>* now) {
  const DeviceIndex current = CurrentDevice();
  while (stats_.cached_bytes > options_.cache_limit_bytes && !lru_.empty()) {
    const PinnedBlock victim = lru_.front();
    Owner& o = owners_[victim.owner];
    for (auto it = o.by_size.find(victim.bytes); it != o.by_size.end(); ++it) {
      if (it->second == lru_.begin()) {
        o.by_size.erase(it);
        break;
      }
    }
    lru_.pop_front();
    stats_.cached_bytes -= victim.bytes;
    o.pending.push_back(victim);  // owner not current: waits, never dropped
    ++stats_.pending_blocks;
    stats_.max_pending_seen = std::max(stats_.max_pending_seen, o.pending.size());
  }
  // Release now what we can: queues of the current device, and any queue
  // that reached its bound (one device switch for the whole batch).
  for (auto& [owner, o] : owners_) {
    if (!o.pending.empty() &&
        (owner == current || o.pending.size() >= options_.max_pending_per_owner)) {
      stats_.pending_blocks -= o.pending.size();
      now->emplace_back(owner, std::move(o.pending));
      o.pending.clear();
    }
  }
}

void PinnedHostAllocator::ReleaseBatch(DeviceIndex owner, std::vector<PinnedBlock> blocks) {
  const DeviceIndex previous = CurrentDevice();
  bool switched = false;
  if (previous != owner) {
    switched = CallAtBoundary("set device", [&] { return backend_->SetDevice(owner); }).ok();
  }
  std::vector<PinnedBlock> failed;
  for (const PinnedBlock& b : blocks) {
    if (!CallAtBoundary("host free", [&] { return backend_->HostFree(owner, b.ptr); }).ok()) {
      failed.push_back(b);
    }
  }
  if (switched) {
    CallAtBoundary("set device", [&] { return backend_->SetDevice(previous); }).IgnoreError();
  }
  std::lock_guard<Mutex> lock(mu_);
  if (switched) ++stats_.batch_switches;
  stats_.releases += blocks.size() - failed.size();
  stats_.failed_releases += failed.size();
  Owner& o = owners_[owner];
  for (const PinnedBlock& b : failed) o.pending.push_back(b);  // kept, retried later
  stats_.pending_blocks += failed.size();
}

void PinnedHostAllocator::OnDeviceCurrent(DeviceIndex owner) {
  std::vector<PinnedBlock> batch;
  {
    std::lock_guard<Mutex> lock(mu_);
    auto it = owners_.find(owner);
    if (it == owners_.end() || it->second.pending.empty()) return;
    batch = std::move(it->second.pending);
    it->second.pending.clear();
    stats_.pending_blocks -= batch.size();
  }
  ReleaseBatch(owner, std::move(batch));
}

absl::Status PinnedHostAllocator::Flush(bool release_cache) {
  std::vector<std::pair<DeviceIndex, std::vector<PinnedBlock>>> batches;
  // Blocks still in flight come back once their streams pass their frees.
  ReapInFlight(/*wait=*/true, &batches);
  {
    std::lock_guard<Mutex> lock(mu_);
    if (release_cache) {
      for (const PinnedBlock& b : lru_) owners_[b.owner].pending.push_back(b);
      stats_.pending_blocks += lru_.size();
      stats_.cached_bytes = 0;
      lru_.clear();
      for (auto& [owner, o] : owners_) o.by_size.clear();
    }
    for (auto& [owner, o] : owners_) {
      if (o.pending.empty()) continue;
      stats_.pending_blocks -= o.pending.size();
      batches.emplace_back(owner, std::move(o.pending));
      o.pending.clear();
    }
  }
  for (auto& [owner, blocks] : batches) ReleaseBatch(owner, std::move(blocks));
  std::lock_guard<Mutex> lock(mu_);
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
  std::lock_guard<Mutex> lock(mu_);
  return stats_;
}

}  // namespace gpualloc
