// The suite's own logic, checked without timing anything: workloads are
// closed and bounded; ratios and goals are computed from the runs given; the
// plot draws one bar per run.
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "harness/bench/bench_allocator.h"
#include "harness/bench/bench_report.h"
#include "harness/bench/bench_workloads.h"

// tcmalloc registers its MallocExtension once at load and never frees it, on
// purpose; under LeakSanitizer that one object is not ours to fix.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:MallocExtension::Register\n";
}

namespace gpualloc::bench {
namespace {

void ExpectClosedAndConsistent(const OpSequence& seq, int streams, std::size_t max_live) {
  std::vector<bool> live(seq.slots, false);
  std::vector<std::uint64_t> bytes(seq.slots, 0);
  std::size_t now = 0, peak = 0;
  for (const Op& op : seq.ops) {
    ASSERT_LT(op.slot, seq.slots);
    ASSERT_LT(op.stream, streams);
    if (op.kind == Op::kAllocate) {
      ASSERT_FALSE(live[op.slot]) << "slot reused while live";
      live[op.slot] = true;
      bytes[op.slot] = op.bytes;
      peak = std::max(peak, ++now);
    } else {
      ASSERT_TRUE(live[op.slot]) << "free of a slot that is not live";
      ASSERT_EQ(bytes[op.slot], op.bytes);
      live[op.slot] = false;
      --now;
    }
  }
  EXPECT_EQ(now, 0u) << "the sequence must end with nothing live";
  EXPECT_LE(peak, max_live);
}

TEST(BenchWorkloads, RandomAllocationsAreClosedBoundedAndLogUniform) {
  const OpSequence seq = RandomAllocations(7, 5000, 256, std::size_t{64} << 20, 16, 4);
  ExpectClosedAndConsistent(seq, 4, 16);
  std::size_t small = 0, large = 0;
  for (const Op& op : seq.ops) {
    if (op.kind != Op::kAllocate) continue;
    EXPECT_GE(op.bytes, 256u);
    EXPECT_LE(op.bytes, std::size_t{64} << 20);
    small += op.bytes < 64 * 1024;
    large += op.bytes >= 64 * 1024;
  }
  // log-uniform over 2^8 .. 2^26: 8 of 18 octaves lie below 64 KiB.
  EXPECT_NEAR(static_cast<double>(small) / static_cast<double>(small + large), 8.0 / 18, 0.05);
  EXPECT_EQ(RandomAllocations(7, 5000, 256, 1 << 20, 16, 4).ops.size(),
            RandomAllocations(7, 5000, 256, 1 << 20, 16, 4).ops.size());
}

TEST(BenchWorkloads, TraceSequencesAreClosed) {
  for (auto kind : {harness::TraceKind::kTraining, harness::TraceKind::kServing}) {
    const OpSequence seq = TraceOps(kind, 3, 4000, 2);
    ExpectClosedAndConsistent(seq, 2, seq.slots);
    EXPECT_GT(seq.peak_live_bytes, 0);
  }
}

TEST(BenchAllocators, EveryAllocatorRunsASequenceAndGivesEverythingBack) {
  const OpSequence seq = RandomAllocations(5, 400, 256, 1 << 20, 8, 2);
  for (const AllocatorSpec& spec : AllAllocators()) {
    if (spec.name == "jemalloc") continue;  // needs the static-TLS re-exec of the bench main
    auto made = spec.make(2);
    if (spec.family == Family::kDevice && !made.ok()) {
      // No device here: listed, and unavailable with the runtime's reason.
      EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable) << spec.name;
      EXPECT_NE(made.status().message().find("no CUDA device"), absl::string_view::npos)
          << spec.name << ": " << made.status();
      continue;
    }
    ASSERT_TRUE(made.ok()) << spec.name << ": " << made.status();
    std::vector<void*> slots(seq.slots, nullptr);
    RunOps(**made, seq, 0, seq.ops.size(), slots);
    for (void* p : slots) EXPECT_EQ(p, nullptr) << spec.name;
    if (spec.family != Family::kHost && spec.family != Family::kDevice) {
      EXPECT_GT((*made)->UpstreamCalls(), 0) << spec.name;
    }
  }
}

BenchResult R(std::string w, std::string a, double ns, std::map<std::string, double> c = {}) {
  BenchResult r;
  r.workload = std::move(w);
  r.allocator = std::move(a);
  r.ns_per_op = ns;
  r.counters = std::move(c);
  return r;
}

TEST(BenchReport, MoreThreadsThanTwoGetTheirOwnRows) {
  const std::vector<BenchResult> runs = {R("random_2t", "caching", 80), R("random_16t", "caching", 40),
                                         R("random_16t", "cudaMallocAsync", 90)};
  const std::string md =
      MarkdownReport(runs, {"random_2t", "random_16t"}, {"caching", "cudaMallocAsync"});
  EXPECT_TRUE(absl::StrContains(md, "| 3. random, many streams, 16 threads | caching | 40.0 |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| 3. random, many streams, 16 threads | cudaMallocAsync | 90.0 |"))
      << md;
}

TEST(BenchReport, RatiosAndGoalsComeFromTheRunsGiven) {
  const std::vector<BenchResult> runs = {
      R("pair_256B", "caching", 20), R("pair_256B", "mimalloc", 8),
      R("pair_256B", "pmr_sync", 80), R("random", "caching", 300, {{"upstream_per_kop", 0.5}}),
      R("random", "pinned_host", 700, {{"upstream_per_kop", 12.5}}),
      R("pinned_bound_256MiB", "pinned_host", 900,
        {{"upstream_per_kop", 21.25}, {"fragmentation", 1.5}}),
      R("pinned_bound_1024MiB", "pinned_host", 250, {{"upstream_per_kop", 0}}),
      R("holes_4096", "pmr_sync", 400),
      R("random_1t", "caching", 100), R("random_2t", "caching", 80),
      R("holes_4096", "caching", 100), R("holes_65536", "caching", 140),
      R("replay_training", "caching", 90, {{"fragmentation", 1.05}}),
      R("replay_serving", "caching", 90, {{"fragmentation", 1.2}}),
      R("metadata_64KiB", "caching", 1e6, {{"metadata_pct", 0.35}}),
  };
  const std::string md = MarkdownReport(runs, {"pair_256B", "random", "metadata_64KiB"},
                                        {"caching", "mimalloc", "pmr_sync"});
  EXPECT_TRUE(absl::StrContains(md, "| 1. pair, 256 B | caching | 20.0 | 2.50× | 0.25× |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| cached pair, 256 B: ns per pair (caching) | 20 ns | ≤ 25 ns | yes |"))
      << md;
  EXPECT_TRUE(absl::StrContains(md, "4,096 holes: caching ÷ pmr_sync | 0.25× | ≤ 0.33× | yes |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "operations | 12.500 | < 10 | **no** |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| 256 MiB | 900 | 21.250 | 1.50 |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| 1024 MiB | 250 | 0.000 | — |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "caching ÷ mimalloc | 2.50× | ≤ 2× | **no** |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "caching ÷ pmr_sync | 0.25× | ≤ 0.33× | yes |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "time at 4,096 (caching) | 1.40× | ≤ 1.5× | yes |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "(caching, workload 3) | 1.25× | ≥ 1.7× | **no** |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "serving trace: peak reserved ÷ peak live (caching) | 1.200 "
                                    "| ≤ 1.10 | **no** |"))
      << md;
  EXPECT_TRUE(absl::StrContains(md, "per 1,000 operations (caching) | 0.500 | < 1 | yes |")) << md;
  EXPECT_TRUE(absl::StrContains(md, "| metadata: host bytes per managed byte at 64 KiB "
                                    "allocations (caching) | 0.35% | < 1% | yes |"))
      << md;
  EXPECT_TRUE(absl::StrContains(md, "| metadata at 64 KiB | 0.35% of managed bytes |")) << md;
}

TEST(BenchReport, PlotHasABarPerRunAndALegendEntryPerAllocator) {
  const std::vector<BenchResult> runs = {R("pair_256B", "caching", 50),
                                         R("pair_256B", "mimalloc", 20),
                                         R("random", "caching", 3000)};
  const std::string svg = SvgPlot(runs, {"pair_256B", "random"}, {"caching", "mimalloc"});
  EXPECT_TRUE(absl::StartsWith(svg, "<svg"));
  std::size_t bars = 0;
  for (std::size_t at = svg.find("<title>"); at != std::string::npos;
       at = svg.find("<title>", at + 1)) {
    ++bars;
  }
  EXPECT_EQ(bars, 3u);
  EXPECT_TRUE(absl::StrContains(svg, ">mimalloc</text>"));
}

}  // namespace
}  // namespace gpualloc::bench
