// What a stress campaign does: every knob of `//harness:stress`, validated in
// one place so a bad value gets one clear message.
#ifndef GPUALLOC_HARNESS_STRESS_STRESS_CONFIG_H_
#define GPUALLOC_HARNESS_STRESS_STRESS_CONFIG_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "allocator/backend/failpoints/fault_rule.h"
#include "allocator/caching/caching_options.h"

namespace gpualloc::harness {

enum class SizeDistribution {
  kUniform,     // uniform in [min_size, max_size]
  kLogUniform,  // log-uniform in [min_size, max_size] (RMM's random_allocations)
  kTraining,    // a training step's mix: many small activations, some large tensors
  kTrace,       // the allocation sizes of a recorded trace (--trace), in random order
};

// Which live allocation a free picks.
enum class Lifetime {
  kRandom,  // any live allocation
  kFifo,    // the oldest (long-lived buffers, queues)
  kLifo,    // the newest (scoped temporaries, stack-like)
};
absl::string_view LifetimeName(Lifetime l);
bool ParseLifetime(absl::string_view name, Lifetime* l);
absl::string_view SizeDistributionName(SizeDistribution d);
bool ParseSizeDistribution(absl::string_view name, SizeDistribution* d);

struct StressConfig {
  std::string backend = "sim";  // sim, cuda or hip
  int devices = 2;
  std::size_t device_capacity_mb = 1024;  // sim only
  int threads = 4;
  int streams_per_device = 2;
  double duration_s = 60;      // stop after this long ...
  std::uint64_t ops = 0;       // ... or after this many operations (0: no limit)
  SizeDistribution sizes = SizeDistribution::kLogUniform;
  std::size_t min_size = 256;
  std::size_t max_size = std::size_t{16} << 20;
  int max_live_per_thread = 48;
  double cross_thread_free_fraction = 0.1;
  double cross_stream_free_fraction = 0.05;
  double device_switch_fraction = 0.2;
  double fault_rate = 0.001;   // probability per backend call
  // What an injected fault does (each fault picks one at random).
  std::vector<FaultAction> fault_kinds = {FaultAction::kReturnError, FaultAction::kThrowBadAlloc,
                                          FaultAction::kThrowRuntimeError,
                                          FaultAction::kThrowForeign};
  Lifetime lifetime = Lifetime::kRandom;
  // Reserved-bytes limit of each device's allocator (0: the device's capacity).
  std::size_t limit_mb = 0;
  // kTrace: the allocation sizes to draw from (read from --trace).
  std::vector<std::size_t> trace_sizes;
  std::string trace_path;
  std::uint64_t seed = 1;
  CrossStreamReuse cross_stream = CrossStreamReuse::kFollowEvents;
  // Route every allocation through a TrackingAdaptor (leak tracking, stacks
  // off); the report then also says nothing was left in its table.
  bool track_leaks = false;
  // The sim's stream-order checker (on in every real run; off only to
  // measure what it costs).
  bool check_stream_order = true;
  // Simulated duration of the kernels the workload queues on each
  // allocation (its last use before a free, and uses on other streams).
  std::int64_t kernel_ns = 2000;
  // Fraction of allocations also used on another stream (after an event and
  // a stream wait; then RecordStream, or an event back before the free).
  double use_elsewhere_fraction = 0.2;
  // Grow each pool's segment in place (virtual memory) instead of obtaining
  // separate segments; limit changes then unmap free tails with work queued.
  bool expandable_segments = false;
  // Per-thread front caches (CachingOptions::front_cache_blocks) in the
  // allocators of the even-numbered devices; the odd-numbered ones keep
  // none, so one campaign covers the allocator with and without them. 0:
  // none anywhere. Off (whatever this says) with --track_leaks, which
  // records every allocation.
  std::size_t front_cache_blocks = 8;
  // Route device 0's allocations through harness::PlantedBugResource, which
  // hands out memory that is still live a second time (a planted overlap), to prove
  // the campaign catches allocator bugs. Off in every real run.
  bool inject_bug = false;

  // OK, or InvalidArgument naming the flag and why.
  absl::Status Validate() const;
  // The flags that reproduce this campaign.
  std::string ToFlags() const;
};

// Draws request sizes for `config`.
class SizeSampler {
 public:
  explicit SizeSampler(const StressConfig& config) : config_(config) {}
  std::size_t Next(std::mt19937_64& rng) const;

 private:
  const StressConfig& config_;
};

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_STRESS_STRESS_CONFIG_H_
