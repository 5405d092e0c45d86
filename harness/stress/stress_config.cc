#include "harness/stress/stress_config.h"

#include <limits>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gpualloc::harness {

absl::string_view SizeDistributionName(SizeDistribution d) {
  switch (d) {
    case SizeDistribution::kUniform: return "uniform";
    case SizeDistribution::kLogUniform: return "loguniform";
    case SizeDistribution::kTraining: return "training";
    case SizeDistribution::kTrace: return "trace";
  }
  return "unknown";
}

bool ParseSizeDistribution(absl::string_view name, SizeDistribution* d) {
  for (SizeDistribution x : {SizeDistribution::kUniform, SizeDistribution::kLogUniform,
                             SizeDistribution::kTraining, SizeDistribution::kTrace}) {
    if (SizeDistributionName(x) == name) {
      *d = x;
      return true;
    }
  }
  return false;
}

absl::string_view LifetimeName(Lifetime l) {
  switch (l) {
    case Lifetime::kRandom: return "random";
    case Lifetime::kFifo: return "fifo";
    case Lifetime::kLifo: return "lifo";
  }
  return "unknown";
}

bool ParseLifetime(absl::string_view name, Lifetime* l) {
  for (Lifetime x : {Lifetime::kRandom, Lifetime::kFifo, Lifetime::kLifo}) {
    if (LifetimeName(x) == name) {
      *l = x;
      return true;
    }
  }
  return false;
}

namespace {
absl::Status Bad(absl::string_view flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrFormat("--%s: %s", flag, why));
}
bool IsFraction(double x) { return x >= 0 && x <= 1; }
}  // namespace

absl::Status StressConfig::Validate() const {
  if (backend != "sim" && backend != "cuda" && backend != "hip") {
    return Bad("backend", absl::StrFormat("'%s' is not one of sim, cuda, hip", backend));
  }
  if (devices < 1 || devices > 64) return Bad("devices", "must be in [1, 64]");
  if (device_capacity_mb < 16 || device_capacity_mb > (std::size_t{1} << 20)) {
    return Bad("device_capacity_mb", "must be in [16, 1048576]");
  }
  if (threads < 1 || threads > 256) return Bad("threads", "must be in [1, 256]");
  if (streams_per_device < 1 || streams_per_device > 64) {
    return Bad("streams", "must be in [1, 64]");
  }
  if (!(duration_s > 0) && ops == 0) {
    return Bad("duration", "must be positive unless --ops bounds the run");
  }
  if (ops == 0 && duration_s > 7 * 24 * 3600) return Bad("duration", "is longer than a week");
  if (min_size == 0 || min_size > max_size) {
    return Bad("min_size", absl::StrFormat("need 0 < min_size (%d) <= max_size (%d)", min_size,
                                           max_size));
  }
  if (max_size > device_capacity_mb * (std::size_t{1} << 20) / 2) {
    return Bad("max_size", "must be at most half the device capacity");
  }
  if (max_live_per_thread < 1 || max_live_per_thread > 100000) {
    return Bad("max_live", "must be in [1, 100000]");
  }
  if (!IsFraction(cross_thread_free_fraction)) return Bad("cross_thread_free", "not in [0, 1]");
  if (!IsFraction(cross_stream_free_fraction)) return Bad("cross_stream_free", "not in [0, 1]");
  if (!IsFraction(device_switch_fraction)) return Bad("device_switch", "not in [0, 1]");
  if (!IsFraction(use_elsewhere_fraction)) return Bad("use_elsewhere", "not in [0, 1]");
  if (kernel_ns < 0 || kernel_ns > 1'000'000'000) {
    return Bad("kernel_ns", "must be in [0, 1e9] (at most one simulated second per kernel)");
  }
  if (expandable_segments && backend == "hip") {
    return Bad("expandable_segments", "HIP 5.2 has no virtual-memory API");
  }
  if (front_cache_blocks > CachingOptions::kMaxFrontCacheBlocks) {
    return Bad("front_cache_blocks",
               absl::StrFormat("must be at most %d", CachingOptions::kMaxFrontCacheBlocks));
  }
  if (!IsFraction(fault_rate) || fault_rate > 0.5) {
    return Bad("fault_rate", "must be in [0, 0.5]");
  }
  if (fault_rate > 0 && fault_kinds.empty()) return Bad("fault_kinds", "needs at least one kind");
  for (FaultAction k : fault_kinds) {
    if (k == FaultAction::kStickyError) {
      return Bad("fault_kinds", "sticky is a lost device: it ends a campaign (unit tests cover it)");
    }
  }
  if (limit_mb > (std::numeric_limits<std::size_t>::max() >> 20)) {
    return Bad("limit_mb", absl::StrFormat("%d MiB does not fit in a byte count (it would wrap)",
                                           limit_mb));
  }
  if (limit_mb != 0 && limit_mb * (std::size_t{1} << 20) < max_size) {
    return Bad("limit_mb", "must be 0 (no limit) or hold at least one --max_size request");
  }
  if (sizes == SizeDistribution::kTrace && trace_sizes.empty()) {
    return Bad("trace", "--sizes=trace needs --trace with at least one allocation");
  }
  return absl::OkStatus();
}

std::string StressConfig::ToFlags() const {
  std::string kinds;
  for (FaultAction k : fault_kinds) absl::StrAppend(&kinds, kinds.empty() ? "" : ",", FaultActionName(k));
  return absl::StrFormat("--lifetime=%s --fault_kinds=%s --limit_mb=%d%s ", LifetimeName(lifetime),
                         kinds, limit_mb, trace_path.empty() ? "" : " --trace=" + trace_path) +
         absl::StrFormat(
      "--backend=%s --devices=%d --device_capacity_mb=%d --threads=%d --streams=%d "
      "--duration=%g --ops=%d --sizes=%s --min_size=%d --max_size=%d --max_live=%d "
      "--cross_thread_free=%g --cross_stream_free=%g --device_switch=%g --fault_rate=%g "
      "--cross_stream_reuse=%s --seed=%d --kernel_ns=%d --use_elsewhere=%g "
      "--front_cache_blocks=%d%s",
      backend, devices, device_capacity_mb, threads, streams_per_device, duration_s, ops,
      SizeDistributionName(sizes), min_size, max_size, max_live_per_thread,
      cross_thread_free_fraction, cross_stream_free_fraction, device_switch_fraction, fault_rate,
      CrossStreamReuseName(cross_stream), seed, kernel_ns, use_elsewhere_fraction,
      front_cache_blocks, std::string(inject_bug ? " --inject_bug" : "") + (track_leaks ? " --track_leaks" : "") +
          (expandable_segments ? " --expandable_segments" : "") +
          (check_stream_order ? "" : " --check_stream_order=false"));
}

std::size_t SizeSampler::Next(std::mt19937_64& rng) const {
  const double lo = static_cast<double>(config_.min_size);
  const double hi = static_cast<double>(config_.max_size);
  std::uniform_real_distribution<double> unit(0, 1);
  auto log_uniform = [&](double a, double b) {
    return std::exp(std::log(a) + unit(rng) * (std::log(b) - std::log(a)));
  };
  double size = lo;
  switch (config_.sizes) {
    case SizeDistribution::kUniform:
      size = lo + unit(rng) * (hi - lo);
      break;
    case SizeDistribution::kLogUniform:
      size = log_uniform(lo, hi);
      break;
    case SizeDistribution::kTrace:
      return std::clamp(config_.trace_sizes[rng() % config_.trace_sizes.size()], config_.min_size,
                        config_.max_size);
    case SizeDistribution::kTraining: {
      // 70% activations and gradients of a few KiB to 1 MiB, 25% mid-size
      // tensors, 5% the largest (weights, optimizer state).
      const double pick = unit(rng);
      const double mid = std::clamp(hi / 16, lo, hi);
      if (pick < 0.70) {
        size = log_uniform(lo, std::min(hi, std::max(lo, 1024.0 * 1024)));
      } else if (pick < 0.95) {
        size = log_uniform(lo, mid);
      } else {
        size = log_uniform(mid, hi);
      }
      break;
    }
  }
  return std::clamp(static_cast<std::size_t>(size), config_.min_size, config_.max_size);
}

}  // namespace gpualloc::harness
