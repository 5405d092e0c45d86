#include "allocator/caching/arena_resource.h"

#include "absl/strings/str_format.h"
#include "allocator/common/checked_math.h"
#include "allocator/common/node_insert.h"

namespace gpualloc {

absl::StatusOr<std::unique_ptr<ArenaResource>> ArenaResource::Create(
    std::shared_ptr<MemoryResource> upstream, ArenaOptions options) {
  if (upstream == nullptr) return absl::InvalidArgumentError("arena: null upstream");
  if (!IsPowerOfTwo(options.alignment) || options.alignment % upstream->alignment() != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "arena: alignment %d must be a power of two and a multiple of the upstream's %d",
        options.alignment, upstream->alignment()));
  }
  if (options.pack_threshold == 0 || options.chunk_bytes < options.pack_threshold) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "arena: need 0 < pack_threshold (%d) <= chunk_bytes (%d)", options.pack_threshold,
        options.chunk_bytes));
  }
  return std::unique_ptr<ArenaResource>(new ArenaResource(std::move(upstream), options));
}

ArenaResource::~ArenaResource() {
  for (auto& [ptr, p] : live_) {
    if (p.chunk == nullptr) upstream_->Deallocate(p.upstream).IgnoreError();
  }
  for (auto& [base, c] : chunks_) upstream_->Deallocate(c->allocation).IgnoreError();
}

MemoryStats ArenaResource::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

ArenaStats ArenaResource::arena_stats() const {
  MutexLock lock(mu_);
  return arena_stats_;
}

absl::StatusOr<Allocation> ArenaResource::DoAllocate(std::size_t bytes, Stream stream) {
  const std::optional<std::size_t> aligned = CheckedRoundUp(bytes, options_.alignment);
  if (!aligned) {
    return absl::ResourceExhaustedError(absl::StrFormat("arena: %d bytes overflows", bytes));
  }
  MutexLock lock(mu_);
  // The tensor's entry first: if it cannot be had, nothing is obtained yet.
  auto entry = PrepareInsert(live_, nullptr, Placement{});
  if (*aligned > options_.pack_threshold) {
    // The upstream only promises its own alignment: ask for enough slack to
    // place the tensor on an arena-aligned address inside.
    const std::optional<std::size_t> with_slack =
        CheckedAdd(*aligned, options_.alignment - upstream_->alignment());
    if (!with_slack) {
      return absl::ResourceExhaustedError(absl::StrFormat("arena: %d bytes overflows", bytes));
    }
    absl::StatusOr<Allocation> own = upstream_->Allocate(*with_slack, stream);
    if (!own.ok()) return own.status();
    const auto base = reinterpret_cast<std::uintptr_t>(own->ptr);
    void* ptr = reinterpret_cast<void*>(*CheckedRoundUp(base, options_.alignment));
    entry.key() = ptr;
    entry.mapped() = Placement{bytes, nullptr, *own};
    CommitInsert(live_, std::move(entry));
    ++arena_stats_.own_segment_tensors;
    arena_stats_.padding_bytes += *with_slack - *aligned;
    stats_.reserved_bytes.Add(static_cast<std::int64_t>(*with_slack));
    stats_.segments.Add(1);
    ++stats_.upstream_allocs;
    stats_.allocated_bytes.Add(static_cast<std::int64_t>(*with_slack));
    stats_.requested_bytes.Add(static_cast<std::int64_t>(bytes));
    stats_.active_blocks.Add(1);
    return Allocation{ptr, bytes, stream};
  }
  // Packed: the first chunk with room at an aligned offset.
  Chunk* chunk = nullptr;
  std::size_t offset = 0;
  // Offsets are aligned on the absolute address: the chunk itself is only as
  // aligned as the upstream makes it.
  auto aligned_offset = [&](const Chunk& c) -> std::optional<std::size_t> {
    const auto base = reinterpret_cast<std::uintptr_t>(c.allocation.ptr);
    const std::optional<std::size_t> cursor = CheckedAdd(base, c.used);
    const std::optional<std::size_t> at = cursor ? CheckedRoundUp(*cursor, options_.alignment)
                                                 : std::nullopt;
    const std::optional<std::size_t> end = at ? CheckedAdd(*at - base, *aligned) : std::nullopt;
    if (!end || *end > c.allocation.bytes) return std::nullopt;
    return *at - base;
  };
  for (auto& [base, c] : chunks_) {
    if (c->allocation.stream != stream) continue;  // safe on its own stream only
    if (std::optional<std::size_t> at = aligned_offset(*c)) {
      chunk = c.get();
      offset = *at;
      break;
    }
  }
  if (chunk == nullptr) {
    auto chunk_entry = PrepareInsert(chunks_, std::uintptr_t{0}, MakePmrUnique<Chunk>(metadata_));
    Chunk* fresh = chunk_entry.mapped().get();
    absl::StatusOr<Allocation> a = upstream_->Allocate(options_.chunk_bytes, stream);
    for (std::size_t size = options_.chunk_bytes / 2; !a.ok() && size >= *aligned; size /= 2) {
      if (a.status().code() != absl::StatusCode::kResourceExhausted) break;
      a = upstream_->Allocate(std::max(size, *aligned), stream);  // smaller chunk
    }
    if (!a.ok()) return a.status();
    fresh->allocation = *a;
    chunk = fresh;
    if (std::optional<std::size_t> at = aligned_offset(*chunk)) {
      offset = *at;
    } else {
      upstream_->Deallocate(*a).IgnoreError();
      return absl::ResourceExhaustedError(absl::StrFormat(
          "arena: a %d-byte chunk cannot hold %d bytes at %d-byte alignment", a->bytes, *aligned,
          options_.alignment));
    }
    chunk_entry.key() = reinterpret_cast<std::uintptr_t>(a->ptr);
    CommitInsert(chunks_, std::move(chunk_entry));
    ++arena_stats_.chunks;
    stats_.reserved_bytes.Add(static_cast<std::int64_t>(a->bytes));
    stats_.segments.Add(1);
    ++stats_.upstream_allocs;
    ++stats_.cache_misses;
  } else {
    ++stats_.cache_hits;
  }
  arena_stats_.padding_bytes += offset - chunk->used;
  chunk->used = offset + *aligned;
  ++chunk->live;
  void* ptr = static_cast<char*>(chunk->allocation.ptr) + offset;
  entry.key() = ptr;
  entry.mapped() = Placement{bytes, chunk, Allocation{ptr, *aligned, stream}};
  CommitInsert(live_, std::move(entry));
  ++arena_stats_.packed_tensors;
  stats_.allocated_bytes.Add(static_cast<std::int64_t>(*aligned));
  stats_.requested_bytes.Add(static_cast<std::int64_t>(bytes));
  stats_.active_blocks.Add(1);
  return Allocation{ptr, bytes, stream};
}

absl::Status ArenaResource::DoDeallocate(const Allocation& allocation, Stream stream) {
  MutexLock lock(mu_);
  auto it = live_.find(allocation.ptr);
  if (it == live_.end() || it->second.bytes != allocation.bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "arena: %p (%d bytes) is not a live tensor of this arena", allocation.ptr, allocation.bytes));
  }
  const Placement p = it->second;
  if (p.chunk == nullptr) {
    absl::Status st = upstream_->Deallocate(p.upstream, stream);
    if (!st.ok()) return st;
    --arena_stats_.own_segment_tensors;
    stats_.reserved_bytes.Sub(static_cast<std::int64_t>(p.upstream.bytes));
    stats_.segments.Sub(1);
    ++stats_.upstream_frees;
  } else if (p.chunk->live == 1) {
    // The last tensor of the chunk: the chunk goes back.
    absl::Status st = upstream_->Deallocate(p.chunk->allocation, stream);
    if (!st.ok()) return st;
    stats_.reserved_bytes.Sub(static_cast<std::int64_t>(p.chunk->allocation.bytes));
    stats_.segments.Sub(1);
    ++stats_.upstream_frees;
    --arena_stats_.chunks;
    chunks_.erase(reinterpret_cast<std::uintptr_t>(p.chunk->allocation.ptr));
  } else {
    --p.chunk->live;
  }
  if (p.chunk != nullptr) --arena_stats_.packed_tensors;
  live_.erase(it);
  stats_.allocated_bytes.Sub(static_cast<std::int64_t>(p.upstream.bytes));
  stats_.requested_bytes.Sub(static_cast<std::int64_t>(p.bytes));
  stats_.active_blocks.Sub(1);
  return absl::OkStatus();
}

}  // namespace gpualloc
