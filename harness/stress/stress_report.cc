#include "harness/stress/stress_report.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace gpualloc::harness {
namespace {

std::string Bytes(std::int64_t b) {
  const double x = static_cast<double>(b);
  if (b >= (std::int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", x / (1 << 30));
  if (b >= (std::int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", x / (1 << 20));
  if (b >= (std::int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", x / (1 << 10));
  return absl::StrFormat("%d B", b);
}

std::string Ns(std::uint64_t ns) {
  if (ns >= 1'000'000) return absl::StrFormat("%.2f ms", ns / 1e6);
  if (ns >= 1'000) return absl::StrFormat("%.1f us", ns / 1e3);
  return absl::StrFormat("%d ns", ns);
}

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string LatencyJson(const LatencyHistogram& h) {
  std::string buckets;
  for (const auto& [upper, count] : h.Buckets()) {
    absl::StrAppendFormat(&buckets, "%s[%d,%d]", buckets.empty() ? "" : ",", upper, count);
  }
  return absl::StrFormat(
      "{\"count\":%d,\"p50\":%d,\"p99\":%d,\"p999\":%d,\"max\":%d,\"buckets\":[%s]}", h.count(),
      h.Percentile(0.5), h.Percentile(0.99), h.Percentile(0.999), h.max(), buckets);
}

}  // namespace

std::string ReportText(const StressReport& r) {
  const double throughput = r.elapsed_s > 0 ? r.ops / r.elapsed_s : 0;
  const std::uint64_t requests = r.allocations + r.frees;
  const std::uint64_t upstream = r.upstream_allocs + r.upstream_frees;
  std::string out;
  absl::StrAppendFormat(&out, "=== stress report ===\n");
  absl::StrAppendFormat(&out, "campaign     %s on %d %s device(s), %d threads, %d streams each\n",
                        SizeDistributionName(r.config.sizes), r.config.devices, r.config.backend,
                        r.config.threads, r.config.streams_per_device);
  absl::StrAppendFormat(&out, "ran          %.1f s, %d operations (%.0f ops/s)\n", r.elapsed_s,
                        r.ops, throughput);
  absl::StrAppendFormat(&out,
                        "requests     %d allocations, %d frees (%d from another thread, %d on "
                        "another stream), %d device switches\n",
                        r.allocations, r.frees, r.cross_thread_frees, r.cross_stream_frees,
                        r.device_switches);
  absl::StrAppendFormat(&out, "allocate     p50 %s  p99 %s  p99.9 %s  max %s\n",
                        Ns(r.allocate_ns.Percentile(0.5)), Ns(r.allocate_ns.Percentile(0.99)),
                        Ns(r.allocate_ns.Percentile(0.999)), Ns(r.allocate_ns.max()));
  absl::StrAppendFormat(&out, "free         p50 %s  p99 %s  p99.9 %s  max %s\n",
                        Ns(r.free_ns.Percentile(0.5)), Ns(r.free_ns.Percentile(0.99)),
                        Ns(r.free_ns.Percentile(0.999)), Ns(r.free_ns.max()));
  absl::StrAppendFormat(&out, "memory       peak allocated %s, peak reserved %s (%.2fx)\n",
                        Bytes(r.peak_allocated), Bytes(r.peak_reserved),
                        r.peak_allocated ? static_cast<double>(r.peak_reserved) / r.peak_allocated
                                         : 0.0);
  double worst_frag = 1;
  for (const TimelineSample& s : r.timeline) worst_frag = std::min(worst_frag, s.largest_free_over_free);
  absl::StrAppendFormat(&out, "fragmentation largest free block / free bytes: worst %.2f\n",
                        worst_frag);
  const std::uint64_t lookups = r.cache_hits + r.cache_misses;
  absl::StrAppendFormat(&out,
                        "cache        hit rate %.2f%% (%d hits, %d misses, %d cross-stream "
                        "reuses), %d cache flushes racing the workload\n",
                        lookups ? 100.0 * r.cache_hits / lookups : 0.0, r.cache_hits,
                        r.cache_misses, r.cross_stream_reuses, r.cache_flushes);
  absl::StrAppendFormat(&out,
                        "upstream     %d backend allocs + %d frees for %d requests: %d calls "
                        "saved (%.2f%%)\n",
                        r.upstream_allocs, r.upstream_frees, requests,
                        requests > upstream ? requests - upstream : 0,
                        requests ? 100.0 * (1.0 - static_cast<double>(upstream) / requests) : 0.0);
  absl::StrAppendFormat(&out,
                        "faults       %d injected, %d surfaced as errors and survived, %d "
                        "out-of-memory refusals\n",
                        r.faults_injected, r.fault_errors, r.out_of_memory);
  absl::StrAppendFormat(&out,
                        "streams      %d allocations also used on another stream, %d limit "
                        "changes racing queued work, %d pinned staging blocks freed with copies "
                        "in flight\n",
                        r.used_elsewhere, r.limit_changes, r.pinned.stream_waits);
  absl::StrAppendFormat(&out, "checks       %d invariant checks during the run, leak check at the end\n",
                        r.invariant_checks);
  if (r.stream_order_checked) {
    absl::StrAppendFormat(&out,
                          "stream order %d operations, %d accesses checked by happens-before: "
                          "%d stream-ordering violations\n",
                          r.stream_order.operations, r.stream_order.accesses_checked,
                          r.stream_order.violations);
  } else {
    absl::StrAppendFormat(&out, "stream order not checked (%s)\n",
                          r.config.backend == "sim" ? "switched off" : "only the sim checks it");
  }
  if (r.ok()) {
    absl::StrAppendFormat(&out, "result       PASS: every invariant held, no leak\n");
  } else {
    absl::StrAppendFormat(&out, "result       FAIL: %d violation(s); first: %s\n",
                          r.violations.size(), r.violations.front());
  }
  return out;
}

std::string ReportJson(const StressReport& r) {
  std::string timeline;
  for (const TimelineSample& s : r.timeline) {
    absl::StrAppendFormat(&timeline, "%s[%.3f,%d,%d,%.4f]", timeline.empty() ? "" : ",", s.t_s,
                          s.allocated, s.reserved, s.largest_free_over_free);
  }
  std::vector<std::string> snaps, violations;
  for (const MemorySnapshot& s : r.peak_snapshot) snaps.push_back(s.ToJson());
  for (const std::string& v : r.violations) violations.push_back(JsonString(v));
  return absl::StrCat(
      "{",
      absl::StrFormat("\"config\":%s,", JsonString(r.config.ToFlags())),
      absl::StrFormat("\"seed\":%d,\"elapsed_s\":%.3f,\"ops\":%d,\"allocations\":%d,\"frees\":%d,",
                      r.config.seed, r.elapsed_s, r.ops, r.allocations, r.frees),
      absl::StrFormat("\"cross_thread_frees\":%d,\"cross_stream_frees\":%d,\"device_switches\":%d,",
                      r.cross_thread_frees, r.cross_stream_frees, r.device_switches),
      absl::StrFormat("\"out_of_memory\":%d,\"fault_errors\":%d,\"faults_injected\":%d,",
                      r.out_of_memory, r.fault_errors, r.faults_injected),
      absl::StrFormat("\"peak_allocated\":%d,\"peak_reserved\":%d,", r.peak_allocated,
                      r.peak_reserved),
      absl::StrFormat("\"cache_hits\":%d,\"cache_misses\":%d,\"cross_stream_reuses\":%d,",
                      r.cache_hits, r.cache_misses, r.cross_stream_reuses),
      absl::StrFormat("\"upstream_allocs\":%d,\"upstream_frees\":%d,\"invariant_checks\":%d,",
                      r.upstream_allocs, r.upstream_frees, r.invariant_checks),
      absl::StrFormat("\"used_elsewhere\":%d,\"limit_changes\":%d,\"pinned_stream_waits\":%d,",
                      r.used_elsewhere, r.limit_changes, r.pinned.stream_waits),
      absl::StrFormat("\"stream_order\":{\"checked\":%s,\"operations\":%d,"
                      "\"accesses_checked\":%d,\"violations\":%d},",
                      r.stream_order_checked ? "true" : "false", r.stream_order.operations,
                      r.stream_order.accesses_checked, r.stream_order.violations),
      "\"allocate_ns\":", LatencyJson(r.allocate_ns), ",\"free_ns\":", LatencyJson(r.free_ns),
      ",\"timeline\":[", timeline, "],\"peak_snapshot\":[", absl::StrJoin(snaps, ","),
      "],\"violations\":[", absl::StrJoin(violations, ","), "],",
      absl::StrFormat("\"ok\":%s}", r.ok() ? "true" : "false"));
}

}  // namespace gpualloc::harness
