// The deterministic-schedule scenario: several threads share one caching
// allocator on a simulated device whose streams are driven by a
// DeterministicScheduler. Threads allocate on their own stream, fill what
// they get in stream order, read each other's allocations from their own
// streams (recording the use, or making the allocation's stream wait with an
// event), free them from any thread with a last read still queued, synchronise and
// empty the cache. A fill that changed before its free, a broken snapshot
// invariant, unbalanced stats, a stream-order violation found by the sim's
// checker or memory left on the device fails the run, and
// because everything runs in the scheduler's order the same seed fails the
// same way again.
#ifndef GPUALLOC_HARNESS_CONCURRENCY_SCHEDULED_SCENARIO_H_
#define GPUALLOC_HARNESS_CONCURRENCY_SCHEDULED_SCENARIO_H_

#include "absl/status/status.h"
#include "allocator/caching/caching_options.h"
#include "harness/concurrency/deterministic_scheduler.h"

namespace gpualloc::harness {

struct ScheduledScenarioOptions {
  int threads = 3;
  int ops_per_thread = 30;
  CrossStreamReuse cross_stream = CrossStreamReuse::kFollowEvents;
  bool expandable_segments = false;
  // CachingOptions::front_cache_blocks: per-thread front caches (0: none).
  std::size_t front_cache_blocks = 0;
  // Plants an allocator bug (harness::PlantedBugResource over the allocator:
  // memory that is still live is handed out again), so the tools can show a
  // failure being reported and replayed.
  bool plant_overlap_bug = false;
};

struct ScheduledScenarioOutcome {
  ScheduleResult schedule;
  absl::Status status;  // the first broken check, naming the thread and operation
};

ScheduledScenarioOutcome RunScheduledScenario(const ScheduleOptions& schedule,
                                              const ScheduledScenarioOptions& options);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_CONCURRENCY_SCHEDULED_SCENARIO_H_
