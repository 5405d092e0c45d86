#include "harness/invariants/invariants.h"

#include <cstring>
#include <iterator>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/common/status_macros.h"

namespace gpualloc::harness {
namespace {

absl::Status Broken(const std::string& what) {
  return absl::FailedPreconditionError(absl::StrCat("invariant violated: ", what));
}

}  // namespace

std::vector<unsigned char> CookiePattern(std::uint64_t seed, std::size_t n) {
  std::vector<unsigned char> out(n);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<unsigned char>(x);
  }
  return out;
}

absl::Status CheckSnapshot(const MemorySnapshot& snapshot) {
  const MemoryStats& stats = snapshot.stats;
  std::int64_t reserved = 0, allocated = 0, requested = 0, active = 0;
  std::uint64_t free_bytes = 0;
  std::uintptr_t previous_end = 0;
  for (const SegmentSnapshot& s : snapshot.segments) {
    if (s.address < previous_end) {
      return Broken(absl::StrFormat("segment %#x overlaps the previous segment", s.address));
    }
    previous_end = s.address + s.size;
    reserved += static_cast<std::int64_t>(s.size);
    std::uintptr_t cursor = s.address;
    const BlockSnapshot* prev = nullptr;
    for (const BlockSnapshot& b : s.blocks) {
      if (b.address != cursor || b.size == 0) {
        return Broken(absl::StrFormat(
            "blocks of segment %#x do not tile it: block at %#x (size %d), expected %#x",
            s.address, b.address, b.size, cursor));
      }
      cursor += b.size;
      if (b.state == BlockState::kAllocated) {
        allocated += static_cast<std::int64_t>(b.size);
        requested += static_cast<std::int64_t>(b.requested);
        ++active;
        if (b.requested == 0 || b.requested > b.size) {
          return Broken(absl::StrFormat("block %#x: requested %d outside (0, %d]", b.address,
                                        b.requested, b.size));
        }
      } else if (b.state == BlockState::kFree) {
        free_bytes += b.size;
        if (prev != nullptr && prev->state == BlockState::kFree &&
            prev->stream.handle == b.stream.handle) {
          return Broken(absl::StrFormat("free neighbours %#x and %#x of one stream not merged",
                                        prev->address, b.address));
        }
      }
      prev = &b;
    }
    if (cursor != s.address + s.size) {
      return Broken(absl::StrFormat("blocks of segment %#x cover %d of its %d bytes", s.address,
                                    cursor - s.address, s.size));
    }
  }
  auto mismatch = [](const char* what, std::int64_t recomputed, std::int64_t counter) {
    return Broken(absl::StrFormat("%s recomputed from the snapshot is %d, the counter says %d",
                                  what, recomputed, counter));
  };
  if (reserved != stats.reserved_bytes.current)
    return mismatch("reserved bytes", reserved, stats.reserved_bytes.current);
  if (allocated != stats.allocated_bytes.current)
    return mismatch("allocated bytes", allocated, stats.allocated_bytes.current);
  if (requested != stats.requested_bytes.current)
    return mismatch("requested bytes", requested, stats.requested_bytes.current);
  if (active != stats.active_blocks.current)
    return mismatch("active blocks", active, stats.active_blocks.current);
  if (static_cast<std::int64_t>(snapshot.segments.size()) != stats.segments.current)
    return mismatch("segments", static_cast<std::int64_t>(snapshot.segments.size()),
                    stats.segments.current);
  if (free_bytes != stats.free_bytes)
    return mismatch("free bytes", static_cast<std::int64_t>(free_bytes),
                    static_cast<std::int64_t>(stats.free_bytes));
  return absl::OkStatus();
}

absl::Status LiveSet::Add(const Allocation& a, std::size_t alignment) {
  const auto p = reinterpret_cast<std::uintptr_t>(a.ptr);
  if (alignment != 0 && p % alignment != 0) {
    return Broken(absl::StrFormat("allocation %p is not aligned to %d", a.ptr, alignment));
  }
  auto next = live_.lower_bound(p);
  if (next != live_.end() && next->first < p + a.bytes) {
    return Broken(absl::StrFormat("allocation [%p, +%d) overlaps live allocation [%#x, +%d)",
                                  a.ptr, a.bytes, next->first, next->second.bytes));
  }
  if (next != live_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.bytes > p) {
      return Broken(absl::StrFormat("allocation [%p, +%d) overlaps live allocation [%#x, +%d)",
                                    a.ptr, a.bytes, prev->first, prev->second.bytes));
    }
  }
  live_.emplace(p, a);
  bytes_ += a.bytes;
  return absl::OkStatus();
}

absl::Status LiveSet::Remove(const Allocation& a) {
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(a.ptr));
  if (it == live_.end()) return Broken(absl::StrFormat("%p is not a live allocation", a.ptr));
  bytes_ -= it->second.bytes;
  live_.erase(it);
  return absl::OkStatus();
}

absl::Status LiveSet::CheckAgainst(const MemorySnapshot& snapshot) const {
  std::map<std::uintptr_t, const BlockSnapshot*> blocks;
  for (const SegmentSnapshot& s : snapshot.segments) {
    for (const BlockSnapshot& b : s.blocks) blocks.emplace(b.address, &b);
  }
  for (const auto& [p, a] : live_) {
    auto it = blocks.find(p);
    if (it == blocks.end() || it->second->state != BlockState::kAllocated ||
        it->second->size < a.bytes) {
      return Broken(absl::StrFormat(
          "live allocation [%#x, +%d) is not an allocated block of a live segment", p, a.bytes));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteCookie(Backend& backend, const Allocation& a, std::uint64_t seed,
                         std::size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  const std::vector<unsigned char> pattern = CookiePattern(seed, bytes);
  // On the allocation's stream, where it may be used at once; the host
  // waits because `pattern` is pageable memory that dies with this call.
  GPUALLOC_RETURN_IF_ERROR(
      backend.MemcpyAsync(a.ptr, pattern.data(), bytes, CopyKind::kHostToDevice, a.stream));
  return backend.SynchronizeStream(a.stream);
}

absl::Status VerifyCookie(Backend& backend, const Allocation& a, std::uint64_t seed,
                          std::size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  std::vector<unsigned char> seen(bytes);
  GPUALLOC_RETURN_IF_ERROR(
      backend.MemcpyAsync(seen.data(), a.ptr, bytes, CopyKind::kDeviceToHost, a.stream));
  GPUALLOC_RETURN_IF_ERROR(backend.SynchronizeStream(a.stream));
  return CheckCookieBytes(a, seed, seen.data(), bytes);
}

absl::Status CheckCookieBytes(const Allocation& a, std::uint64_t seed, const unsigned char* seen,
                              std::size_t bytes) {
  const std::vector<unsigned char> want = CookiePattern(seed, bytes);
  if (std::memcmp(seen, want.data(), bytes) != 0) {
    std::size_t first = 0;
    while (first < bytes && seen[first] == want[first]) ++first;
    return Broken(absl::StrFormat(
        "contents of allocation %p changed while it was live (first difference at byte %d): "
        "another allocation overlapped it or it was reused before its free",
        a.ptr, first));
  }
  return absl::OkStatus();
}

absl::Status OrderStreams(Backend& backend, Stream from, Stream to) {
  if (from == to) return absl::OkStatus();
  GPUALLOC_ASSIGN_OR_RETURN(Event e, backend.CreateEvent(from.device));
  absl::Status st = backend.RecordEvent(e, from);
  if (st.ok()) st = backend.StreamWaitEvent(to, e);
  absl::Status destroyed = backend.DestroyEvent(e);
  return st.ok() ? destroyed : st;
}

absl::Status CheckStreamOrder(const SimBackend& sim) {
  absl::Status st = sim.CheckStreamOrder();
  if (st.ok()) return st;
  return Broken(std::string(st.message()));
}

}  // namespace gpualloc::harness
