// Random fault campaigns, FoundationDB style: for each seed, every fault site
// (a backend operation) is switched on for the whole run with some
// probability, and an active site fires with its own probability each time
// it is reached, all from one seeded generator. Campaigns also include a
// sticky device error (every later call fails: a lost device) and a device
// under pressure whose out-of-memory goes away once the allocator flushes its
// cache. Each campaign runs random operations through the shared interpreter,
// whose model, invariants and cookies are checked after every operation and
// whose leak check runs at the end. A failure names its seed; rerun one with
// GPUALLOC_CAMPAIGN_SEED=<seed> (or --gtest_filter='*/<seed>'). GPUALLOC_CAMPAIGNS
// sets how many seeds run (60); a sharded run (shard_count) splits them
// between the shards.
//
// Built with GPUALLOC_TEST_RUNTIME ("cuda", "hip"), the same campaigns run
// over the real device: the failpoint backend wraps the real runtime.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "harness/ops/interpreter.h"
#ifdef GPUALLOC_TEST_RUNTIME
#include "harness/gpu/require_device.h"
#endif

namespace gpualloc::harness {
namespace {

constexpr BackendOp kSites[] = {
    BackendOp::kMalloc,       BackendOp::kFree,          BackendOp::kEventCreate,
    BackendOp::kEventRecord,  BackendOp::kEventQuery,    BackendOp::kStreamWaitEvent,
    BackendOp::kVmCreate,     BackendOp::kVmMap,         BackendOp::kVmSetAccess,
    BackendOp::kVmUnmap,      BackendOp::kVmReleasePhysical, BackendOp::kHostAlloc,
    BackendOp::kHostFree,     BackendOp::kDeviceSynchronize, BackendOp::kSetDevice,
};
constexpr FaultAction kActions[] = {FaultAction::kReturnError, FaultAction::kThrowBadAlloc,
                                    FaultAction::kThrowRuntimeError, FaultAction::kThrowForeign};

struct Campaign {
  std::string description;
};

// Arms `fp` for one campaign and says what was armed.
Campaign Arm(std::mt19937_64& rng, FailpointBackend& fp, Backend& device) {
  std::uniform_real_distribution<double> unit(0, 1);
  Campaign c;
  for (BackendOp site : kSites) {
    if (unit(rng) >= 0.3) continue;  // this site stays quiet for the whole run
    const double p = unit(rng) < 0.5 ? 0.02 : 0.2;
    const FaultAction action = kActions[rng() % 4];
    fp.AddRule(FaultRule::WithProbability(site, p, action));
    c.description += std::string(BackendOpName(site)) + ":" + std::string(FaultActionName(action)) +
                     "@" + std::to_string(p) + " ";
  }
  if (unit(rng) < 0.15) {  // a lost device, at some point
    FaultRule sticky = FaultRule::WithProbability(std::nullopt, 0.002, FaultAction::kStickyError);
    sticky.max_fires = 1;
    fp.AddRule(sticky);
    c.description += "sticky ";
  }
  if (unit(rng) < 0.3) {  // a device under pressure: OOM while much is held
    // Held = how much less the device has free than when the campaign began.
    const std::size_t budget = (8 + rng() % 40) << 20;
    const std::size_t free_at_start = device.GetMemoryInfo(0).value().free_bytes;
    FaultRule pressure = FaultRule::When(
        BackendOp::kMalloc,
        [&device, budget, free_at_start](const CallInfo& call) {
          absl::StatusOr<MemoryInfo> now = device.GetMemoryInfo(0);
          const std::size_t held =
              now.ok() && now->free_bytes < free_at_start ? free_at_start - now->free_bytes : 0;
          return held + call.bytes > budget;
        },
        FaultAction::kReturnError);
    pressure.code = absl::StatusCode::kResourceExhausted;
    fp.AddRule(pressure);
    c.description += "pressure<=" + std::to_string(budget >> 20) + "MiB ";
  }
  return c;
}

Op RandomOp(std::mt19937_64& rng) {
  Op op;
  const int pick = static_cast<int>(rng() % 100);
  op.kind = pick < 35 ? OpKind::kAllocate
            : pick < 60 ? OpKind::kFree
                        : static_cast<OpKind>(rng() % static_cast<int>(OpKind::kCount));
  op.a = op.kind == OpKind::kAllocate ? 1 + rng() % (rng() % 8 == 0 ? (24u << 20) : (256u << 10))
                                      : rng() % 4096;
  op.b = rng() % 8;
  if (op.kind == OpKind::kPinnedAllocate || op.kind == OpKind::kSharedView) op.a = 1 + rng() % (1 << 20);
  if (op.kind == OpKind::kSetLimit) op.a = rng() % 3 == 0 ? 0 : 64 + rng() % 1024;
  return op;
}

void RunCampaign(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  InterpreterOptions options;
  options.seed = seed;
  options.caching.cross_stream = static_cast<CrossStreamReuse>(rng() % 3);
  options.caching.expandable_segments = rng() % 4 == 0;
  options.stack = static_cast<InterpreterStack>(rng() % 3);
#ifdef GPUALLOC_TEST_RUNTIME
  options.device = MakeRealBackend(GPUALLOC_TEST_RUNTIME);
  if (options.caching.expandable_segments) {
    absl::StatusOr<DeviceProperties> p = options.device->GetDeviceProperties(0);
    options.caching.expandable_segments = p.ok() && p->supports_virtual_memory;
  }
#endif
  OpInterpreter interpreter(options);
  const Campaign c = Arm(rng, interpreter.failpoints(), interpreter.device());
  for (int i = 0; i < 250; ++i) {
    const absl::Status st = interpreter.Apply(RandomOp(rng));
    ASSERT_TRUE(st.ok()) << "campaign seed " << seed << " [" << c.description << "]\n" << st;
  }
  const absl::Status st = interpreter.Finish();
  ASSERT_TRUE(st.ok()) << "campaign seed " << seed << " [" << c.description << "]\n" << st;
}

// One test case per seed, so Bazel's sharding (through GoogleTest's) gives
// each shard a disjoint share of the seeds and the shards together run them
// all; a failure's name is its seed.
class FaultCampaigns : public ::testing::TestWithParam<std::uint64_t> {};

TEST_P(FaultCampaigns, RandomFaultSitesNeverBreakAnInvariant) { RunCampaign(GetParam()); }

std::vector<std::uint64_t> Seeds() {
  if (const char* one = std::getenv("GPUALLOC_CAMPAIGN_SEED")) {
    return {std::strtoull(one, nullptr, 10)};
  }
  const char* count = std::getenv("GPUALLOC_CAMPAIGNS");
  const std::uint64_t n = count ? std::strtoull(count, nullptr, 10) : 60;
  std::vector<std::uint64_t> seeds;
  for (std::uint64_t seed = 1; seed <= n; ++seed) seeds.push_back(seed);
  return seeds;
}

INSTANTIATE_TEST_SUITE_P(Seed, FaultCampaigns, ::testing::ValuesIn(Seeds()),
                         [](const ::testing::TestParamInfo<std::uint64_t>& info) {
                           return std::to_string(info.param);
                         });

}  // namespace
}  // namespace gpualloc::harness
