// RunStress: one stress campaign against the caching allocator stack on the
// chosen backend, with invariants checked all along and a leak check at the
// end. The engine behind `//harness:stress`.
#ifndef GPUALLOC_HARNESS_STRESS_STRESS_RUNNER_H_
#define GPUALLOC_HARNESS_STRESS_STRESS_RUNNER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/backend/sim/stream_order_checker.h"
#include "allocator/bridge/ring_buffer_bridge.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/pools/keyed_buffer_cache.h"
#include "allocator/pools/staging_buffer_pool.h"
#include "allocator/stats/memory_snapshot.h"
#include "harness/stress/latency_histogram.h"
#include "harness/stress/stress_config.h"

namespace gpualloc::harness {

struct TimelineSample {
  double t_s = 0;
  std::int64_t allocated = 0;  // summed over devices
  std::int64_t reserved = 0;
  double largest_free_over_free = 1;  // 1: one hole; near 0: slivers
};

struct Progress {
  double elapsed_s = 0;
  double planned_s = 0;
  std::uint64_t ops = 0;
  std::int64_t allocated = 0;
  std::int64_t reserved = 0;
  std::int64_t peak_reserved = 0;
  std::uint64_t faults = 0;
  std::uint64_t violations = 0;
};

struct StressReport {
  StressConfig config;
  double elapsed_s = 0;
  std::uint64_t ops = 0;
  std::uint64_t allocations = 0;
  std::uint64_t frees = 0;
  std::uint64_t out_of_memory = 0;        // allocations refused for lack of memory
  std::uint64_t fault_errors = 0;         // calls that failed because of injected faults
  std::uint64_t cross_thread_frees = 0;
  std::uint64_t cross_stream_frees = 0;
  std::uint64_t device_switches = 0;
  std::uint64_t cache_flushes = 0;        // EmptyCache calls racing the workload
  std::uint64_t invariant_checks = 0;
  std::uint64_t used_elsewhere = 0;       // allocations also used on another stream
  std::uint64_t limit_changes = 0;        // reserved limits moved under the workload
  PinnedHostStats pinned;                 // the pinned blocks that staged the cookies
  StagingPoolStats staging;               // the staging pools' (summed over devices)
  KeyedCacheStats keyed;                  // the keyed buffer caches' (summed over devices)
  std::uint64_t reductions = 0;           // round trips through the keyed buffer caches
  std::uint64_t bridge_round_trips = 0;   // messages sent through a ring-buffer bridge and echoed
  std::uint64_t bridge_to_device = 0;     // messages the bridges flushed to the devices
  std::uint64_t bridge_to_host = 0;       // and drained back
  std::uint64_t peer_uses = 0;            // allocations read by the next device (peer copies)
  bool stream_order_checked = false;      // the sim's checker was on
  StreamOrderStats stream_order;          // what it checked and found
  LatencyHistogram allocate_ns;
  LatencyHistogram free_ns;
  std::int64_t peak_allocated = 0;        // sum over devices of each device's peak
  std::int64_t peak_reserved = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t cache_misses = 0;
  std::uint64_t upstream_allocs = 0;
  std::uint64_t upstream_frees = 0;
  std::uint64_t cross_stream_reuses = 0;
  std::uint64_t faults_injected = 0;
  std::vector<TimelineSample> timeline;
  std::vector<MemorySnapshot> peak_snapshot;  // one per device, at peak reserved
  std::vector<std::string> violations;        // empty when every invariant held
  bool leak_check_passed = true;              // nothing left allocated, tracked or on the device

  bool ok() const { return violations.empty(); }
  // Why a run with no violation still proves nothing ("" when it does): it
  // made no successful allocation, or too few (fewer than
  // kMinConclusiveAllocations, or fewer than one in ten attempts).
  static constexpr std::uint64_t kMinConclusiveAllocations = 16;
  std::string InconclusiveReason() const;
};

// Progress is reported about every `progress_interval_s` from a monitor
// thread. Errors: a config that fails Validate(), or a backend with no
// device. Invariant violations are not errors: they are in the report.
absl::StatusOr<StressReport> RunStress(const StressConfig& config,
                                       const std::function<void(const Progress&)>& progress,
                                       double progress_interval_s = 1.0);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_STRESS_STRESS_RUNNER_H_
