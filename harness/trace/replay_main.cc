// //harness:replay — replays an allocation trace (ours, or RMM's logging CSV)
// against an allocator stack on the simulated device and prints what it made
// of it. Exit status: 0 replayed, 2 bad flags or an unreadable/corrupt trace
// (the message names the offset or line).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/resource/backend_resource.h"
#include "harness/cli/flag_check.h"
#include "harness/trace/replay.h"

ABSL_FLAG(std::string, trace, "", "the trace file to replay (required)");
ABSL_FLAG(std::string, allocator, "caching",
          "caching, caching_expandable, size_class (over caching) or backend (no cache)");
ABSL_FLAG(std::size_t, device_capacity_mb, 16384, "capacity of the simulated device, MiB");
ABSL_FLAG(bool, cuda_like_costs, false, "simulate cudaMalloc/cudaFree latencies");

int main(int argc, char** argv) {
  using namespace gpualloc;
  absl::SetProgramUsageMessage(
      "Replays an allocation trace against an allocator stack.\n"
      "  bazel run //harness:replay -- --trace=step.trace --allocator=caching");
  harness::CheckFlagValuesOrExit("replay", argc, argv);
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_trace);
  if (path.empty()) harness::ExitWithBadFlag("replay", "--trace is required");
  std::error_code error;
  if (std::filesystem::is_directory(harness::UserPath(path), error)) {
    harness::ExitWithBadFlag("replay", absl::StrFormat("--trace: %s is a directory, not a trace file", path));
  }
  std::ifstream in(harness::UserPath(path), std::ios::binary);
  if (!in) harness::ExitWithBadFlag("replay", absl::StrFormat("cannot read %s", path));
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().empty()) {
    harness::ExitWithBadFlag("replay", absl::StrFormat("--trace: %s is empty (0 bytes): not a trace", path));
  }
  const std::size_t capacity_mb = absl::GetFlag(FLAGS_device_capacity_mb);
  if (capacity_mb < 16 || capacity_mb > (std::size_t{1} << 20)) {
    harness::ExitWithBadFlag("replay", absl::StrFormat(
        "--device_capacity_mb: %d is not in [16, 1048576] MiB (16 MiB to 1 TiB)", capacity_mb));
  }
  absl::StatusOr<std::vector<TraceEvent>> events = ParseTrace(contents.str());
  if (!events.ok()) {
    std::fprintf(stderr, "replay: %s: %s\n", path.c_str(), std::string(events.status().message()).c_str());
    return 2;
  }
  SimOptions options = SimOptions::WithDevices(1, capacity_mb << 20);
  if (absl::GetFlag(FLAGS_cuda_like_costs)) options.cost = SimCostModel::CudaLike();
  auto sim = std::make_shared<SimBackend>(options);
  const std::string kind = absl::GetFlag(FLAGS_allocator);
  std::shared_ptr<MemoryResource> resource;
  CachingOptions caching;
  caching.expandable_segments = kind == "caching_expandable";
  if (kind == "backend") {
    resource = std::make_shared<BackendResource>(sim, 0);
  } else if (kind == "caching" || kind == "caching_expandable" || kind == "size_class") {
    std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, caching).value();
    resource = cache;
    if (kind == "size_class") resource = SizeClassPool::Create(cache, sim, {}).value();
  } else {
    harness::ExitWithBadFlag("replay", absl::StrFormat(
        "--allocator: '%s' is not one of caching, caching_expandable, size_class, backend", kind));
  }
  absl::StatusOr<harness::ReplayReport> report = harness::Replay(*events, *resource);
  if (!report.ok()) {
    std::fprintf(stderr, "replay: %s: %s\n", path.c_str(), std::string(report.status().message()).c_str());
    return 2;
  }
  std::printf("=== replay of %s on %s ===\n%s", path.c_str(), kind.c_str(), report->ToString().c_str());
  return 0;
}
