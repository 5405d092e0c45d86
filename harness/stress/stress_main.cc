// //harness:stress — the main job: a stress campaign against the caching
// allocator with live progress, a report, and an exit status that says
// whether every invariant held (0), one broke (1), or the flags were bad (2).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "allocator/observe/trace_format.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "harness/cli/flag_check.h"
#include "harness/stress/stress_html.h"
#include "harness/stress/stress_report.h"
#include "harness/stress/stress_runner.h"

ABSL_FLAG(std::string, backend, "sim", "sim, cuda or hip");
ABSL_FLAG(int, devices, 2, "devices to use");
ABSL_FLAG(std::size_t, device_capacity_mb, 1024, "capacity of each simulated device, MiB");
ABSL_FLAG(int, threads, 4, "worker threads");
ABSL_FLAG(int, streams, 2, "streams per device (the default stream counts as one)");
ABSL_FLAG(double, duration, 60, "seconds to run (ignored when --ops is set)");
ABSL_FLAG(std::uint64_t, ops, 0, "operations to run; 0 runs for --duration");
ABSL_FLAG(std::string, sizes, "loguniform",
          "size distribution: uniform, loguniform, training, or trace (sizes of --trace)");
ABSL_FLAG(std::string, trace, "", "a recorded trace (ours or RMM CSV) whose sizes --sizes=trace draws");
ABSL_FLAG(std::string, lifetime, "random", "which live allocation a free picks: random, fifo, lifo");
ABSL_FLAG(std::string, fault_kinds, "error,bad_alloc,runtime_error,foreign",
          "what injected faults do: error, bad_alloc, runtime_error, foreign, delay");
ABSL_FLAG(std::size_t, limit_mb, 0, "reserved-bytes limit of each device's allocator, MiB (0: none)");
ABSL_FLAG(std::size_t, min_size, 256, "smallest request, bytes");
ABSL_FLAG(std::size_t, max_size, std::size_t{16} << 20, "largest request, bytes");
ABSL_FLAG(int, max_live, 48, "live allocations per thread at most (bounds lifetimes)");
ABSL_FLAG(double, cross_thread_free, 0.1, "fraction of frees done by another thread");
ABSL_FLAG(double, cross_stream_free, 0.05, "fraction of frees on another stream");
ABSL_FLAG(double, device_switch, 0.2, "how often threads switch device (0..1)");
ABSL_FLAG(double, fault_rate, 0.001, "probability of an injected fault per backend call");
ABSL_FLAG(std::string, cross_stream_reuse, "follow", "none, opportunistic or follow");
ABSL_FLAG(std::uint64_t, seed, 1, "seed of the workload and the faults");
ABSL_FLAG(std::string, report_json, "", "write the JSON report to this file");
ABSL_FLAG(std::string, report_html, "", "write the self-contained HTML report to this file");
ABSL_FLAG(bool, track_leaks, false, "route allocations through a leak-tracking adaptor (measures its cost)");
ABSL_FLAG(bool, check_stream_order, true,
          "the sim's stream-order checker (turn off only to measure its cost)");
ABSL_FLAG(std::int64_t, kernel_ns, 2000, "simulated duration of each queued kernel, ns");
ABSL_FLAG(double, use_elsewhere, 0.2, "fraction of allocations also used on another stream");
ABSL_FLAG(bool, expandable_segments, false, "grow segments in place (virtual memory)");
ABSL_FLAG(std::size_t, front_cache_blocks, 8,
          "per-thread front cache of the even-numbered devices' allocators, blocks (0: none)");
ABSL_FLAG(bool, inject_bug, false, "plant an allocator bug (proves the checks catch it)");

namespace {

using gpualloc::CrossStreamReuse;
using gpualloc::harness::StressConfig;

[[noreturn]] void BadFlags(const std::string& message) {
  gpualloc::harness::ExitWithBadFlag("stress", message);
}

StressConfig ConfigFromFlags() {
  StressConfig c;
  c.backend = absl::GetFlag(FLAGS_backend);
  c.devices = absl::GetFlag(FLAGS_devices);
  c.device_capacity_mb = absl::GetFlag(FLAGS_device_capacity_mb);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.streams_per_device = absl::GetFlag(FLAGS_streams);
  c.duration_s = absl::GetFlag(FLAGS_duration);
  c.ops = absl::GetFlag(FLAGS_ops);
  if (!gpualloc::harness::ParseSizeDistribution(absl::GetFlag(FLAGS_sizes), &c.sizes)) {
    BadFlags(absl::StrFormat("--sizes: '%s' is not one of uniform, loguniform, training, trace",
                             absl::GetFlag(FLAGS_sizes)));
  }
  c.min_size = absl::GetFlag(FLAGS_min_size);
  c.max_size = absl::GetFlag(FLAGS_max_size);
  c.max_live_per_thread = absl::GetFlag(FLAGS_max_live);
  c.cross_thread_free_fraction = absl::GetFlag(FLAGS_cross_thread_free);
  c.cross_stream_free_fraction = absl::GetFlag(FLAGS_cross_stream_free);
  c.device_switch_fraction = absl::GetFlag(FLAGS_device_switch);
  c.fault_rate = absl::GetFlag(FLAGS_fault_rate);
  const std::string reuse = absl::GetFlag(FLAGS_cross_stream_reuse);
  if (!gpualloc::ParseCrossStreamReuse(reuse, &c.cross_stream)) {
    BadFlags(absl::StrFormat("--cross_stream_reuse: '%s' is not one of none, opportunistic, follow",
                             reuse));
  }
  if (!gpualloc::harness::ParseLifetime(absl::GetFlag(FLAGS_lifetime), &c.lifetime)) {
    BadFlags(absl::StrFormat("--lifetime: '%s' is not one of random, fifo, lifo",
                             absl::GetFlag(FLAGS_lifetime)));
  }
  c.fault_kinds.clear();
  for (absl::string_view kind : absl::StrSplit(absl::GetFlag(FLAGS_fault_kinds), ',', absl::SkipEmpty())) {
    gpualloc::FaultAction action;
    if (!gpualloc::ParseFaultAction(kind, &action)) {
      BadFlags(absl::StrFormat("--fault_kinds: '%s' is not one of error, bad_alloc, runtime_error, "
                               "foreign, delay", kind));
    }
    c.fault_kinds.push_back(action);
  }
  c.limit_mb = absl::GetFlag(FLAGS_limit_mb);
  c.trace_path = absl::GetFlag(FLAGS_trace);
  if (!c.trace_path.empty()) {
    std::ifstream in(gpualloc::harness::UserPath(c.trace_path), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    if (!in) BadFlags(absl::StrFormat("--trace: cannot read %s", c.trace_path));
    absl::StatusOr<std::vector<gpualloc::TraceEvent>> events = gpualloc::ParseTrace(bytes.str());
    if (!events.ok()) BadFlags(absl::StrFormat("--trace: %s", events.status().message()));
    for (const gpualloc::TraceEvent& e : *events) {
      if (e.action == gpualloc::TraceEvent::Action::kAllocate) c.trace_sizes.push_back(e.size);
    }
  }
  c.seed = absl::GetFlag(FLAGS_seed);
  c.inject_bug = absl::GetFlag(FLAGS_inject_bug);
  c.track_leaks = absl::GetFlag(FLAGS_track_leaks);
  c.check_stream_order = absl::GetFlag(FLAGS_check_stream_order);
  c.kernel_ns = absl::GetFlag(FLAGS_kernel_ns);
  c.use_elsewhere_fraction = absl::GetFlag(FLAGS_use_elsewhere);
  c.expandable_segments = absl::GetFlag(FLAGS_expandable_segments);
  c.front_cache_blocks = absl::GetFlag(FLAGS_front_cache_blocks);
  if (absl::Status st = c.Validate(); !st.ok()) BadFlags(std::string(st.message()));
  return c;
}

std::string Mib(std::int64_t b) { return absl::StrFormat("%.0f MiB", b / 1048576.0); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Stress campaign against the caching GPU allocator.\n"
      "  bazel run //harness:stress -- [--threads=4 --duration=60 --fault_rate=0.001 ...]\n"
      "Exit status: 0 every invariant held, 1 an invariant broke (the report says how to\n"
      "reproduce it), 2 bad flags, an unwritable report path or no such device, 3 the\n"
      "campaign was inconclusive (too few allocations succeeded to mean anything).");
  gpualloc::harness::CheckFlagValuesOrExit("stress", argc, argv);
  absl::ParseCommandLine(argc, argv);
  const StressConfig config = ConfigFromFlags();
  // Report paths are checked now, not after a long run.
  for (const auto& [flag, path] : {std::pair<const char*, std::string>{"report_json",
                                                                       absl::GetFlag(FLAGS_report_json)},
                                   {"report_html", absl::GetFlag(FLAGS_report_html)}}) {
    if (path.empty()) continue;
    std::ofstream probe(gpualloc::harness::UserPath(path), std::ios::app);
    if (!probe) {
      BadFlags(absl::StrFormat("--%s: cannot write %s: %s", flag, path, std::strerror(errno)));
    }
  }

  const bool tty = isatty(fileno(stderr));
  double last_line = -1e9;
  auto progress = [&](const gpualloc::harness::Progress& p) {
    const std::string remaining =
        p.planned_s > 0 ? absl::StrFormat("%.0fs left", std::max(0.0, p.planned_s - p.elapsed_s))
                        : std::string("ops-bounded");
    const std::string line = absl::StrFormat(
        "[%5.1fs] %d ops (%.0f/s)  allocated %s  reserved %s  peak %s  faults %d  violations %d  %s",
        p.elapsed_s, p.ops, p.elapsed_s > 0 ? p.ops / p.elapsed_s : 0.0, Mib(p.allocated),
        Mib(p.reserved), Mib(p.peak_reserved), p.faults, p.violations, remaining);
    if (tty) {
      std::fprintf(stderr, "\r%-130s", line.c_str());
    } else if (p.elapsed_s - last_line >= 5) {  // plain periodic lines in logs
      last_line = p.elapsed_s;
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  };
  std::fprintf(stderr, "stress: %s\n", config.ToFlags().c_str());
  absl::StatusOr<gpualloc::harness::StressReport> report =
      gpualloc::harness::RunStress(config, progress, tty ? 0.2 : 1.0);
  if (tty) std::fprintf(stderr, "\n");
  if (!report.ok()) {
    std::fprintf(stderr, "stress: cannot run: %s\n", std::string(report.status().message()).c_str());
    return 2;
  }
  std::printf("%s", gpualloc::harness::ReportText(*report).c_str());
  const std::string json_path = absl::GetFlag(FLAGS_report_json);
  if (!json_path.empty()) {
    std::ofstream out(gpualloc::harness::UserPath(json_path));
    out << gpualloc::harness::ReportJson(*report) << "\n";
    if (!out) {
      std::fprintf(stderr, "stress: could not write %s\n", json_path.c_str());
      return 2;
    }
    std::printf("JSON report written to %s\n", json_path.c_str());
  }
  const std::string html_path = absl::GetFlag(FLAGS_report_html);
  if (!html_path.empty()) {
    std::ofstream out(gpualloc::harness::UserPath(html_path));
    out << gpualloc::harness::ReportHtml(*report);
    if (!out) {
      std::fprintf(stderr, "stress: could not write %s\n", html_path.c_str());
      return 2;
    }
    std::printf("HTML report written to %s\n", html_path.c_str());
  }
  if (!report->ok()) {
    std::printf("\nFirst violation: %s\nSeed: %llu\nReproduce with:\n  ./bazelw run //harness:stress -- %s\n",
                report->violations.front().c_str(), static_cast<unsigned long long>(config.seed),
                config.ToFlags().c_str());
    return 1;
  }
  if (!report->InconclusiveReason().empty()) return 3;  // not a PASS: nothing much ran
  return 0;
}
