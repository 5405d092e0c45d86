#include "allocator/policy/pressure_adaptor.h"

#include "absl/strings/str_format.h"

namespace gpualloc {
namespace {
// Set while this thread runs a reaction: allocations a reaction makes through
// the adaptor must not start another one.
thread_local bool tls_reacting = false;
}  // namespace

absl::string_view PressureLevelName(PressureLevel level) {
  switch (level) {
    case PressureLevel::kNormal: return "normal";
    case PressureLevel::kElevated: return "elevated";
    case PressureLevel::kWarning: return "warning";
    case PressureLevel::kCritical: return "critical";
    case PressureLevel::kOutOfMemory: return "out-of-memory";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<PressureAdaptor>> PressureAdaptor::Create(
    std::shared_ptr<MemoryResource> upstream, PressureOptions options) {
  if (upstream == nullptr || options.capacity_bytes == 0) {
    return absl::InvalidArgumentError("pressure adaptor: needs an upstream and a capacity");
  }
  double previous = 0;
  for (double t : options.thresholds) {
    if (!(t > previous) || t > 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "pressure adaptor: thresholds must increase within (0, 1], got %g after %g", t, previous));
    }
    previous = t;
  }
  if (!(options.shrink_target >= 0 && options.shrink_target <= 1)) {
    return absl::InvalidArgumentError("pressure adaptor: shrink_target must be in [0, 1]");
  }
  return std::unique_ptr<PressureAdaptor>(new PressureAdaptor(std::move(upstream), std::move(options)));
}

PressureLevel PressureAdaptor::LevelFor(const MemoryStats& s) const {
  const double used =
      static_cast<double>(s.reserved_bytes.current) / static_cast<double>(options_.capacity_bytes);
  int level = 0;
  while (level < 4 && used >= options_.thresholds[level]) ++level;
  return static_cast<PressureLevel>(level);
}

void PressureAdaptor::Update() {
  if (tls_reacting) return;
  const MemoryStats s = upstream_->stats();
  const PressureLevel now = LevelFor(s);
  const PressureLevel before = level_.exchange(now, std::memory_order_relaxed);
  if (now <= before) return;  // reactions run on the way up only
  tls_reacting = true;
  switch (options_.reactions[static_cast<int>(now)]) {
    case PressureReaction::kNone:
      break;
    case PressureReaction::kShrinkCache:
      if (options_.shrink) {
        const auto target = static_cast<std::int64_t>(options_.shrink_target * options_.capacity_bytes);
        const std::int64_t keep = target - s.allocated_bytes.current;
        try {
          options_.shrink(keep > 0 ? static_cast<std::size_t>(keep) : 0).IgnoreError();
        } catch (...) {
        }
        level_.store(LevelFor(upstream_->stats()), std::memory_order_relaxed);
      }
      break;
    case PressureReaction::kCallback:
      if (options_.callback) {
        try {
          options_.callback(now, s);
        } catch (...) {
          // A throwing callback must not break allocation.
        }
      }
      break;
  }
  tls_reacting = false;
  reactions_run_.fetch_add(1);
}

absl::StatusOr<Allocation> PressureAdaptor::DoAllocate(std::size_t bytes, Stream stream) {
  absl::StatusOr<Allocation> a = upstream_->Allocate(bytes, stream);
  Update();
  return a;
}

absl::Status PressureAdaptor::DoDeallocate(const Allocation& allocation, Stream stream) {
  absl::Status st = upstream_->Deallocate(allocation, stream);
  Update();
  return st;
}

}  // namespace gpualloc
