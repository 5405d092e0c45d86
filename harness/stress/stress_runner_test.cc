#include "harness/stress/stress_runner.h"

#include "gtest/gtest.h"
#include "harness/stress/stress_report.h"

namespace gpualloc::harness {
namespace {

StressConfig Short() {
  StressConfig c;
  c.device_capacity_mb = 256;
  c.max_size = 4 << 20;
  c.threads = 3;
  c.ops = 6000;
  c.fault_rate = 0.01;
  c.seed = 7;
  return c;
}

TEST(StressRunner, ShortCampaignWithFaultsHoldsEveryInvariant) {
  absl::StatusOr<StressReport> r = RunStress(Short(), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok()) << ReportText(*r);
  EXPECT_GE(r->ops, 6000u);
  EXPECT_GT(r->allocations, 1000u);
  EXPECT_GT(r->faults_injected, 0u) << "faults were injected and survived";
  EXPECT_GT(r->cache_hits, r->cache_misses);
  EXPECT_GT(r->invariant_checks, 0u);
  EXPECT_GE(r->timeline.size(), 2u) << "a timeline has its start and its end";
  const std::string json = ReportJson(*r);
  EXPECT_NE(json.find("\"ok\":true"), std::string::npos);
  EXPECT_NE(json.find("\"timeline\":["), std::string::npos);
}

TEST(StressRunner, APlantedAllocatorBugIsCaught) {
  StressConfig c = Short();
  c.inject_bug = true;
  c.fault_rate = 0;
  c.devices = 1;
  absl::StatusOr<StressReport> r = RunStress(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(r->ok()) << "the corrupted free went unnoticed";
  // Whichever check sees it first: the snapshot invariants, the content
  // cookies, or the allocator rejecting a free of the overlapped neighbour.
  const std::string& v = r->violations.front();
  EXPECT_TRUE(v.find("invariant violated") != std::string::npos ||
              v.find("failed unexpectedly") != std::string::npos)
      << v;
}

TEST(StressRunner, BadConfigsAreRejectedWithTheFlagName) {
  StressConfig c = Short();
  c.threads = 0;
  EXPECT_NE(RunStress(c, nullptr).status().message().find("--threads"), absl::string_view::npos);
  c = Short();
  c.fault_rate = 2;
  EXPECT_NE(RunStress(c, nullptr).status().message().find("--fault_rate"), absl::string_view::npos);
  c = Short();
  c.min_size = 0;
  EXPECT_FALSE(RunStress(c, nullptr).ok());
  c = Short();
  c.backend = "cuda";
  absl::StatusOr<StressReport> cuda = RunStress(c, nullptr);
  if (!cuda.ok()) {
    EXPECT_NE(cuda.status().message().find("no CUDA device"), absl::string_view::npos)
        << cuda.status();
  }
}

}  // namespace
}  // namespace gpualloc::harness
