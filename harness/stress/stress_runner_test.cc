#include "harness/stress/stress_runner.h"

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "harness/stress/stress_html.h"
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

TEST(StressRunner, TheWorkloadUsesItsMemoryOnStreamsAndTheCheckerSeesAllOfIt) {
  absl::StatusOr<StressReport> r = RunStress(Short(), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok()) << ReportText(*r);
  ASSERT_TRUE(r->stream_order_checked);
  EXPECT_EQ(r->stream_order.violations, 0u);
  // Cookies written and checked by async copies, kernels before every free,
  // uses on other streams: several checked operations per request.
  EXPECT_GT(r->stream_order.operations, 3 * r->allocations);
  EXPECT_GT(r->stream_order.accesses_checked, r->stream_order.operations);
  EXPECT_GT(r->used_elsewhere, r->allocations / 20);  // a fifth, on the other of two streams
  EXPECT_EQ(r->pinned.stream_waits, 2 * r->allocations)
      << "every staging block, for a cookie write or a check, was freed with its copies queued";
  EXPECT_NE(ReportText(*r).find("stream order"), std::string::npos);
  const std::string json = ReportJson(*r);
  EXPECT_NE(json.find(absl::StrFormat("\"stream_order\":{\"checked\":true,\"operations\":%d,",
                                      r->stream_order.operations)),
            std::string::npos)
      << json.substr(0, 600);
  EXPECT_NE(json.find("\"violations\":0}"), std::string::npos);
  EXPECT_NE(ReportHtml(*r).find(absl::StrFormat(
                "<p id=\"stream-order\">Stream order: %d operations",
                r->stream_order.operations)),
            std::string::npos);
}

TEST(StressRunner, ExpandableSegmentsSurviveLimitChangesWithWorkQueued) {
  StressConfig c = Short();
  c.expandable_segments = true;
  c.ops = 12000;
  absl::StatusOr<StressReport> r = RunStress(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok()) << ReportText(*r);
  EXPECT_EQ(r->stream_order.violations, 0u);
}

TEST(StressRunner, WithTheCheckerOffTheReportSaysSo) {
  StressConfig c = Short();
  c.check_stream_order = false;
  c.ops = 2000;
  absl::StatusOr<StressReport> r = RunStress(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->stream_order_checked);
  EXPECT_NE(ReportText(*r).find("stream order not checked (switched off)"), std::string::npos);
}

TEST(StressRunner, APlantedAllocatorBugIsCaught) {
  StressConfig c = Short();
  c.inject_bug = true;
  c.fault_rate = 0;
  c.devices = 1;
  absl::StatusOr<StressReport> r = RunStress(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(r->ok()) << "memory handed out twice went unnoticed";
  // Whichever check sees it first: the content cookies, the stream-order
  // checker (two owners writing the same bytes), or the snapshot invariants.
  const std::string& v = r->violations.front();
  EXPECT_TRUE(v.find("invariant violated") != std::string::npos ||
              v.find("stream-order violation") != std::string::npos ||
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
