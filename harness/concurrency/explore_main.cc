// //harness/concurrency:explore — runs the deterministic-schedule scenario for
// a range of seeds and prints one line per run with its trace hash. A failing
// seed prints the command that replays it exactly and exits 1; bad flags
// exit 2.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "harness/cli/flag_check.h"
#include "harness/concurrency/scheduled_scenario.h"

ABSL_FLAG(std::uint64_t, seed, 1, "first seed");
ABSL_FLAG(int, seeds, 1, "how many consecutive seeds to run");
ABSL_FLAG(std::string, strategy, "random", "random (random walk) or pct");
ABSL_FLAG(int, pct_depth, 3, "PCT: bug depth aimed at (priority changes + 1)");
ABSL_FLAG(int, threads, 3, "allocating threads");
ABSL_FLAG(int, ops, 30, "operations per thread");
ABSL_FLAG(std::string, cross_stream_reuse, "follow", "none, opportunistic or follow");
ABSL_FLAG(bool, expandable_segments, false, "grow segments in place");
ABSL_FLAG(std::size_t, front_cache_blocks, 0, "per-thread front cache, blocks (0: none)");
ABSL_FLAG(bool, plant_bug, false,
          "plant an allocator bug (a freed block overlaps its neighbour) to see a failure");

int main(int argc, char** argv) {
  using namespace gpualloc;
  using namespace gpualloc::harness;
  absl::SetProgramUsageMessage(
      "Explores thread and stream interleavings from seeds.\n"
      "  bazel run //harness/concurrency:explore -- --seed=1 --seeds=100 --strategy=pct");
  CheckFlagValuesOrExit("explore", argc, argv);
  absl::ParseCommandLine(argc, argv);

  ScheduleOptions schedule;
  absl::StatusOr<ScheduleStrategy> strategy = ParseScheduleStrategy(absl::GetFlag(FLAGS_strategy));
  if (!strategy.ok()) ExitWithBadFlag("explore", absl::StrCat("--strategy: ", strategy.status().message()));
  schedule.strategy = *strategy;
  schedule.pct_depth = absl::GetFlag(FLAGS_pct_depth);
  ScheduledScenarioOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.ops_per_thread = absl::GetFlag(FLAGS_ops);
  options.expandable_segments = absl::GetFlag(FLAGS_expandable_segments);
  options.front_cache_blocks = absl::GetFlag(FLAGS_front_cache_blocks);
  if (options.front_cache_blocks > CachingOptions::kMaxFrontCacheBlocks) {
    ExitWithBadFlag("explore", absl::StrFormat("--front_cache_blocks must be at most %d",
                                               CachingOptions::kMaxFrontCacheBlocks));
  }
  options.plant_overlap_bug = absl::GetFlag(FLAGS_plant_bug);
  const std::string reuse = absl::GetFlag(FLAGS_cross_stream_reuse);
  if (!ParseCrossStreamReuse(reuse, &options.cross_stream)) {
    ExitWithBadFlag("explore", absl::StrFormat(
        "--cross_stream_reuse: '%s' is not one of none, opportunistic, follow", reuse));
  }
  if (options.threads < 1 || options.threads > 64) {
    ExitWithBadFlag("explore", "--threads must be in [1, 64]");
  }
  if (options.ops_per_thread < 0 || absl::GetFlag(FLAGS_seeds) < 1 || schedule.pct_depth < 1) {
    ExitWithBadFlag("explore", "--ops must be >= 0, --seeds and --pct_depth >= 1");
  }

  const std::uint64_t first = absl::GetFlag(FLAGS_seed);
  for (int i = 0; i < absl::GetFlag(FLAGS_seeds); ++i) {
    schedule.seed = first + static_cast<std::uint64_t>(i);
    const ScheduledScenarioOutcome outcome = RunScheduledScenario(schedule, options);
    std::printf("%s %s\n", outcome.schedule.Describe(schedule).c_str(),
                outcome.status.ok() ? "ok" : "FAILED");
    if (!outcome.status.ok()) {
      std::printf("  %s\n  replay: bazel run //harness/concurrency:explore -- --seed=%llu "
                  "--strategy=%s --pct_depth=%d --threads=%d --ops=%d "
                  "--cross_stream_reuse=%s --expandable_segments=%s "
                  "--front_cache_blocks=%zu --plant_bug=%s\n",
                  outcome.status.ToString().c_str(),
                  static_cast<unsigned long long>(schedule.seed),
                  std::string(ScheduleStrategyName(schedule.strategy)).c_str(),
                  schedule.pct_depth, options.threads, options.ops_per_thread, reuse.c_str(),
                  options.expandable_segments ? "true" : "false", options.front_cache_blocks,
                  options.plant_overlap_bug ? "true" : "false");
      return 1;
    }
  }
  return 0;
}
