#include "harness/stress/stress_runner.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
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
  const nlohmann::json json = nlohmann::json::parse(ReportJson(*r));
  EXPECT_EQ(json["ok"], true);
  EXPECT_EQ(json["verdict"], "pass");
  EXPECT_GE(json["timeline"].size(), 2u);
}

// Every figure the text states is in the JSON, with the same value: the
// text's numbers are pulled out line by line and compared.
TEST(StressRunner, TheJsonReportCarriesEveryFigureOfTheTextAndTheyAgree) {
  absl::StatusOr<StressReport> r = RunStress(Short(), nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string text = ReportText(*r);
  const nlohmann::json j = nlohmann::json::parse(ReportJson(*r));
  auto line = [&](const std::string& label) {
    const std::size_t at = text.find("\n" + label);
    EXPECT_NE(at, std::string::npos) << label;
    return text.substr(at + 1, text.find('\n', at + 1) - at - 1);
  };
  auto has = [](const std::string& l, const std::string& figure) {
    return l.find(figure) != std::string::npos;
  };
  auto num = [](const nlohmann::json& v) { return absl::StrCat(v.get<std::uint64_t>()); };
  const std::string requests = line("requests");
  for (const char* key : {"allocations", "frees", "cross_thread_frees", "cross_stream_frees",
                          "device_switches"}) {
    EXPECT_TRUE(has(requests, num(j[key]))) << key << " " << j[key] << " not in: " << requests;
  }
  EXPECT_TRUE(has(line("ran"), absl::StrFormat("%d operations", j["ops"].get<std::uint64_t>())));
  EXPECT_TRUE(has(line("fragmentation"),
                  absl::StrFormat("worst %.2f", j["worst_fragmentation"].get<double>())));
  const std::string cache = line("cache");
  for (const char* key : {"cache_hits", "cache_misses", "cross_stream_reuses", "cache_flushes"}) {
    EXPECT_TRUE(has(cache, num(j[key]))) << key << " not in: " << cache;
  }
  EXPECT_TRUE(has(cache, absl::StrFormat("%.2f%%", 100 * j["cache_hit_rate"].get<double>())));
  const std::string upstream = line("upstream");
  for (const char* key : {"upstream_allocs", "upstream_frees", "requests", "upstream_calls_saved"}) {
    EXPECT_TRUE(has(upstream, num(j[key]))) << key << " not in: " << upstream;
  }
  const std::string faults = line("faults");
  for (const char* key : {"faults_injected", "fault_errors", "out_of_memory"}) {
    EXPECT_TRUE(has(faults, num(j[key]))) << key << " not in: " << faults;
  }
  const std::string streams = line("streams");
  for (const char* key : {"used_elsewhere", "limit_changes", "pinned_stream_waits"}) {
    EXPECT_TRUE(has(streams, num(j[key]))) << key << " not in: " << streams;
  }
  EXPECT_TRUE(has(line("checks"), num(j["invariant_checks"])));
  EXPECT_TRUE(has(line("checks"), "leak check at the end " + j["leak_check"].get<std::string>()));
  const std::string order = line("stream order");
  EXPECT_TRUE(has(order, num(j["stream_order"]["operations"])));
  EXPECT_TRUE(has(order, num(j["stream_order"]["accesses_checked"])));
  EXPECT_TRUE(has(order, num(j["stream_order"]["violations"]) + " stream-ordering violations"));
  EXPECT_TRUE(has(line("result"), "PASS"));
  EXPECT_EQ(j["verdict"], "pass");
  // The free-latency histogram counts every free the report counts.
  EXPECT_EQ(j["free_ns"]["count"], j["frees"]);
}

TEST(StressRunner, ACampaignThatAllocatesAlmostNothingIsInconclusiveNotAPass) {
  StressConfig c = Short();
  c.ops = 10;
  c.threads = 1;
  c.fault_rate = 0;
  absl::StatusOr<StressReport> r = RunStress(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok()) << "no violation...";
  EXPECT_NE(r->InconclusiveReason(), "") << "... but too few allocations to mean anything";
  EXPECT_EQ(Verdict(*r), "inconclusive");
  EXPECT_NE(ReportText(*r).find("result       INCONCLUSIVE: only "), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(ReportJson(*r))["verdict"], "inconclusive");
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
  // Each allocation stages two cookie transfers, each through a pinned block
  // freed with its copies queued or a staging pool buffer.
  EXPECT_EQ(r->pinned.stream_waits + r->staging.acquires, 2 * r->allocations)
      << "every staging block, for a cookie write or a check, was freed with its copies queued";
  EXPECT_GT(r->pinned.stream_waits, r->allocations / 2);
  EXPECT_GT(r->staging.acquires, r->allocations / 2);
  EXPECT_GT(r->staging.hits, r->staging.acquires / 2) << "the staging pool reuses its buffers";
  EXPECT_GT(r->reductions, 0u);
  EXPECT_EQ(r->keyed.acquires, r->reductions);
  EXPECT_GT(r->keyed.hits, 0u);
  EXPECT_GT(r->bridge_round_trips, 0u);
  EXPECT_GT(r->peer_uses, 0u) << "allocations read by the other device";
  EXPECT_GT(r->bridge_to_device, 0u);
  EXPECT_EQ(r->bridge_to_host, r->bridge_to_device) << "every message came back";
  EXPECT_NE(ReportText(*r).find("stream order"), std::string::npos);
  const nlohmann::json json = nlohmann::json::parse(ReportJson(*r));
  EXPECT_EQ(json["stream_order"]["checked"], true);
  EXPECT_EQ(json["stream_order"]["operations"], r->stream_order.operations);
  EXPECT_EQ(json["stream_order"]["violations"], 0);
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
  // The live registry sees the second owner at once, whichever thread holds
  // the first (the cookies and the stream-order checker would see it later,
  // and only when the timing lets them).
  const std::string& v = r->violations.front();
  EXPECT_NE(v.find("overlaps the live allocation"), std::string::npos) << v;
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
