// PressureAdaptor: watches how full a device is and reacts before it runs
// out, instead of after.
//
// Utilisation is reserved / capacity of the upstream resource, read from its
// stats after every allocation and free. It maps to a level through four
// thresholds (defaults 0.5, 0.7, 0.85, 0.95):
//
//   Normal < Elevated < Warning < Critical < OutOfMemory
//
// Each level has a reaction, run when the level rises to it:
//   kNone, kShrinkCache (call `shrink(keep_bytes)` so that at most
//   `shrink_target` of capacity stays reserved — wire it to
//   CachingAllocator::EmptyCache), or kCallback (the user's function).
// Reactions never run under any allocator lock (the adaptor holds none while
// reacting), and a reaction that allocates through this adaptor does not
// re-trigger reactions (no recursion).
// Thread-safe: the level is an atomic; reactions may run on any thread.
#ifndef GPUALLOC_ALLOCATOR_POLICY_PRESSURE_ADAPTOR_H_
#define GPUALLOC_ALLOCATOR_POLICY_PRESSURE_ADAPTOR_H_

#include <array>
#include <atomic>
#include <functional>
#include <memory>

#include "allocator/resource/memory_resource.h"

namespace gpualloc {

enum class PressureLevel { kNormal = 0, kElevated, kWarning, kCritical, kOutOfMemory };
absl::string_view PressureLevelName(PressureLevel level);

enum class PressureReaction { kNone, kShrinkCache, kCallback };

struct PressureOptions {
  std::size_t capacity_bytes = 0;  // required: what 100% means
  // Utilisation at which Elevated, Warning, Critical, OutOfMemory begin.
  std::array<double, 4> thresholds = {0.5, 0.7, 0.85, 0.95};
  // Reaction on entering each level (index = level).
  std::array<PressureReaction, 5> reactions = {
      PressureReaction::kNone, PressureReaction::kNone, PressureReaction::kCallback,
      PressureReaction::kShrinkCache, PressureReaction::kShrinkCache};
  // kShrinkCache keeps at most this fraction of capacity reserved.
  double shrink_target = 0.6;
  std::function<absl::Status(std::size_t keep_bytes)> shrink;
  std::function<void(PressureLevel level, const MemoryStats& stats)> callback;
};

class PressureAdaptor final : public MemoryResource {
 public:
  // InvalidArgument if capacity is 0 or thresholds are not increasing in (0, 1].
  static absl::StatusOr<std::unique_ptr<PressureAdaptor>> Create(
      std::shared_ptr<MemoryResource> upstream, PressureOptions options);

  absl::string_view name() const override { return "pressure"; }
  DeviceIndex device() const override { return upstream_->device(); }
  std::size_t alignment() const override { return upstream_->alignment(); }
  MemoryStats stats() const override { return upstream_->stats(); }

  PressureLevel level() const { return level_.load(std::memory_order_relaxed); }
  std::uint64_t reactions_run() const { return reactions_run_.load(); }
  // Re-reads the upstream's stats and reacts (e.g. after an external change).
  void Update();

 private:
  PressureAdaptor(std::shared_ptr<MemoryResource> upstream, PressureOptions options)
      : upstream_(std::move(upstream)), options_(std::move(options)) {}
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override;
  absl::Status DoDeallocate(const Allocation& allocation, Stream stream) override;
  PressureLevel LevelFor(const MemoryStats& s) const;

  const std::shared_ptr<MemoryResource> upstream_;
  const PressureOptions options_;
  std::atomic<PressureLevel> level_{PressureLevel::kNormal};
  std::atomic<std::uint64_t> reactions_run_{0};
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_POLICY_PRESSURE_ADAPTOR_H_
