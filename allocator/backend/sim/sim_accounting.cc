// The sim's ground truth: what every device has handed out, for the
// harness's leak and overrun checks.
#include <algorithm>
#include <mutex>

#include "absl/strings/str_format.h"
#include "allocator/backend/sim/sim_internal.h"

namespace gpualloc {

using sim_internal::Hex;
using sim_internal::SimError;
using sim_internal::SimulateLatency;

bool SimAccounting::AllReleased() const {
  for (const Device& d : devices) {
    if (d.device_bytes || d.live_allocations || d.managed_bytes || d.pinned_bytes ||
        d.vm_reserved_bytes || d.vm_physical_bytes) {
      return false;
    }
  }
  return live_streams == 0 && live_events == 0;
}

std::string SimAccounting::Describe() const {
  std::string out;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const Device& d = devices[i];
    if (d.device_bytes || d.live_allocations || d.managed_bytes || d.pinned_bytes ||
        d.vm_reserved_bytes || d.vm_physical_bytes) {
      absl::StrAppendFormat(&out,
                            "sim device %d: %d device bytes in %d allocations, %d managed, %d "
                            "pinned, %d VM reserved, %d VM physical still live\n",
                            i, d.device_bytes, d.live_allocations, d.managed_bytes,
                            d.pinned_bytes, d.vm_reserved_bytes, d.vm_physical_bytes);
    }
  }
  if (live_streams || live_events) {
    absl::StrAppendFormat(&out, "sim: %d streams and %d events not destroyed\n", live_streams,
                          live_events);
  }
  if (stream_order.violations) {
    absl::StrAppendFormat(&out, "sim: %d stream-order violations\n", stream_order.violations);
  }
  if (guard_violations) {
    absl::StrAppendFormat(&out, "sim: %d guard violations (buffer overruns)\n", guard_violations);
  }
  return out.empty() ? "sim: nothing outstanding\n" : out;
}
SimAccounting SimBackend::Accounting() const {
  SimAccounting out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& d : devices_) {
    SimAccounting::Device a;
    a.device_bytes = d->device_bytes;
    a.peak_device_bytes = d->peak_device_bytes;
    a.live_allocations = d->live_allocations;
    a.managed_bytes = d->managed_bytes;
    a.pinned_bytes = d->pinned_bytes;
    a.vm_reserved_bytes = d->vm_reserved_bytes;
    a.vm_physical_bytes = d->vm_physical_bytes;
    a.free_address_space = d->space.free_bytes();
    a.largest_free_range = d->space.largest_free_range();
    a.page_migrations = d->page_migrations;
    out.devices.push_back(a);
  }
  std::transform(calls_.begin(), calls_.end(), out.calls.begin(),
                 [](const std::atomic<std::uint64_t>& c) { return c.load(std::memory_order_relaxed); });
  out.live_streams = streams_.size();
  out.live_events = events_.size();
  out.guard_violations = guard_violations_;
  if (checker_) out.stream_order = checker_->stats();
  return out;
}

}  // namespace gpualloc
