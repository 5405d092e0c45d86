#include "harness/trace/replay.h"

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/resource/backend_resource.h"
#include "gtest/gtest.h"
#include "harness/trace/trace_generator.h"

namespace gpualloc::harness {
namespace {

TEST(TraceGenerator, IsDeterministicBySeedAndValid) {
  for (TraceKind kind : {TraceKind::kTraining, TraceKind::kServing}) {
    const std::vector<TraceEvent> a = GenerateTrace(kind, 7, 20000);
    EXPECT_EQ(a, GenerateTrace(kind, 7, 20000));
    EXPECT_NE(a, GenerateTrace(kind, 8, 20000));
    EXPECT_GE(a.size(), 20000u);
    EXPECT_TRUE(ValidateTrace(a).ok());
  }
}

TEST(Replay, ComparesAllocatorsOnTheSameWorkload) {
  const std::vector<TraceEvent> trace = GenerateTrace(TraceKind::kTraining, 1, 20000);
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 4ull << 30));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  BackendResource raw(sim, 0);
  const ReplayReport cached = Replay(trace, *cache).value();
  const ReplayReport direct = Replay(trace, raw).value();
  EXPECT_EQ(cached.peak_requested, direct.peak_requested) << "the same workload";
  EXPECT_EQ(cached.failed_allocations, 0u);
  EXPECT_LT(cached.upstream_allocs, direct.upstream_allocs / 10) << "the cache saves calls";
  EXPECT_GE(cached.Fragmentation(), 1.0);
  EXPECT_EQ(cache->stats().allocated_bytes.current, 0) << "left as found";
  EXPECT_NE(cached.ToString().find("peak reserved"), std::string::npos);
}

TEST(Replay, RefusesAnInvalidTrace) {
  std::vector<TraceEvent> bad(1);
  bad[0].action = TraceEvent::Action::kFree;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  BackendResource raw(sim, 0);
  EXPECT_FALSE(Replay(bad, raw).ok());
}

}  // namespace
}  // namespace gpualloc::harness
