#include "harness/trace/replay.h"

#include <algorithm>
#include <chrono>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "allocator/common/status_macros.h"

namespace gpualloc::harness {

std::string ReplayReport::ToString() const {
  return absl::StrFormat(
      "events        %d (%d allocations, %d refused)\n"
      "time          %.3f s (%.0f ns per event)\n"
      "peak needed   %.1f MiB (the trace's own live bytes at its peak)\n"
      "peak reserved %.1f MiB (%.3fx the need)\n"
      "upstream      %d allocs, %d frees\n",
      events, allocations, failed_allocations, seconds, events ? seconds * 1e9 / events : 0.0,
      peak_requested / 1048576.0, peak_reserved / 1048576.0, Fragmentation(), upstream_allocs,
      upstream_frees);
}

absl::StatusOr<ReplayReport> Replay(const std::vector<TraceEvent>& events, MemoryResource& resource) {
  GPUALLOC_RETURN_IF_ERROR(ValidateTrace(events));
  ReplayReport report;
  const MemoryStats before = resource.stats();
  absl::flat_hash_map<std::uint64_t, Allocation> live;
  std::int64_t requested = 0;
  const Stream stream = Stream::Default(resource.device());
  const auto start = std::chrono::steady_clock::now();
  for (const TraceEvent& e : events) {
    ++report.events;
    if (e.action == TraceEvent::Action::kAllocate) {
      ++report.allocations;
      absl::StatusOr<Allocation> a = resource.Allocate(e.size, stream);
      if (!a.ok()) {
        if (a.status().code() != absl::StatusCode::kResourceExhausted) return a.status();
        ++report.failed_allocations;
        continue;
      }
      live.emplace(e.id, *a);
      requested += static_cast<std::int64_t>(e.size);
      report.peak_requested = std::max(report.peak_requested, requested);
      report.peak_reserved = std::max(report.peak_reserved, resource.stats().reserved_bytes.current);
    } else {
      auto it = live.find(e.id);
      if (it == live.end()) continue;  // its allocation was refused
      GPUALLOC_RETURN_IF_ERROR(resource.Deallocate(it->second));
      requested -= static_cast<std::int64_t>(it->second.bytes);
      live.erase(it);
    }
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& [id, a] : live) GPUALLOC_RETURN_IF_ERROR(resource.Deallocate(a));
  const MemoryStats after = resource.stats();
  report.upstream_allocs = after.upstream_allocs - before.upstream_allocs;
  report.upstream_frees = after.upstream_frees - before.upstream_frees;
  return report;
}

}  // namespace gpualloc::harness
