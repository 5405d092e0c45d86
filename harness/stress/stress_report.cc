#include "harness/stress/stress_report.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

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
                        "streams      %d allocations also used on another stream, %d read by "
                        "another device, %d limit changes racing queued work, %d pinned staging "
                        "blocks freed with copies in flight\n",
                        r.used_elsewhere, r.peer_uses, r.limit_changes, r.pinned.stream_waits);
  absl::StrAppendFormat(&out,
                        "pools        staging: %d buffers acquired, hit rate %.2f%%, %d passed "
                        "over with copies in flight; keyed: %d reductions, hit rate %.2f%%, %d "
                        "stream handoffs\n",
                        r.staging.acquires, 100.0 * r.staging.hit_rate(), r.staging.busy_skips,
                        r.reductions, 100.0 * r.keyed.hit_rate(), r.keyed.stream_handoffs);
  absl::StrAppendFormat(&out,
                        "bridge       %d round trips: %d messages to the devices, %d back, in "
                        "order\n",
                        r.bridge_round_trips, r.bridge_to_device, r.bridge_to_host);
  absl::StrAppendFormat(&out, "checks       %d invariant checks during the run, leak check at the end %s\n",
                        r.invariant_checks, r.leak_check_passed ? "passed" : "failed");
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
  if (r.ok() && !r.InconclusiveReason().empty()) {
    absl::StrAppendFormat(&out, "result       INCONCLUSIVE: %s\n", r.InconclusiveReason());
  } else if (r.ok()) {
    absl::StrAppendFormat(&out, "result       PASS: every invariant held, no leak\n");
  } else {
    absl::StrAppendFormat(&out, "result       FAIL: %d violation(s); first: %s\n",
                          r.violations.size(), r.violations.front());
  }
  return out;
}

std::string Verdict(const StressReport& r) {
  if (!r.ok()) return "fail";
  return r.InconclusiveReason().empty() ? "pass" : "inconclusive";
}

std::string ReportJson(const StressReport& r) {
  using nlohmann::json;
  auto latency = [](const LatencyHistogram& h) {
    json buckets = json::array();
    for (const auto& [upper, count] : h.Buckets()) buckets.push_back({upper, count});
    return json{{"count", h.count()},           {"p50", h.Percentile(0.5)},
                {"p99", h.Percentile(0.99)},    {"p999", h.Percentile(0.999)},
                {"max", h.max()},               {"buckets", std::move(buckets)}};
  };
  json timeline = json::array();
  double worst_fragmentation = 1;
  for (const TimelineSample& t : r.timeline) {
    timeline.push_back({t.t_s, t.allocated, t.reserved, t.largest_free_over_free});
    worst_fragmentation = std::min(worst_fragmentation, t.largest_free_over_free);
  }
  json snapshots = json::array();
  for (const MemorySnapshot& snap : r.peak_snapshot) snapshots.push_back(json::parse(snap.ToJson()));
  const std::uint64_t requests = r.allocations + r.frees;
  const std::uint64_t upstream = r.upstream_allocs + r.upstream_frees;
  const std::uint64_t lookups = r.cache_hits + r.cache_misses;
  json j = {
      {"config", r.config.ToFlags()},
      {"campaign",
       {{"sizes", std::string(SizeDistributionName(r.config.sizes))},
        {"devices", r.config.devices},
        {"backend", r.config.backend},
        {"threads", r.config.threads},
        {"streams_per_device", r.config.streams_per_device}}},
      {"seed", r.config.seed},
      {"elapsed_s", r.elapsed_s},
      {"ops", r.ops},
      {"ops_per_s", r.elapsed_s > 0 ? r.ops / r.elapsed_s : 0.0},
      {"allocations", r.allocations},
      {"frees", r.frees},
      {"cross_thread_frees", r.cross_thread_frees},
      {"cross_stream_frees", r.cross_stream_frees},
      {"device_switches", r.device_switches},
      {"allocate_ns", latency(r.allocate_ns)},
      {"free_ns", latency(r.free_ns)},
      {"peak_allocated", r.peak_allocated},
      {"peak_reserved", r.peak_reserved},
      {"worst_fragmentation", worst_fragmentation},
      {"cache_hits", r.cache_hits},
      {"cache_misses", r.cache_misses},
      {"cache_hit_rate", lookups ? static_cast<double>(r.cache_hits) / lookups : 0.0},
      {"cross_stream_reuses", r.cross_stream_reuses},
      {"cache_flushes", r.cache_flushes},
      {"requests", requests},
      {"upstream_allocs", r.upstream_allocs},
      {"upstream_frees", r.upstream_frees},
      {"upstream_calls_saved", requests > upstream ? requests - upstream : 0},
      {"faults_injected", r.faults_injected},
      {"fault_errors", r.fault_errors},
      {"out_of_memory", r.out_of_memory},
      {"used_elsewhere", r.used_elsewhere},
      {"peer_uses", r.peer_uses},
      {"limit_changes", r.limit_changes},
      {"pinned_stream_waits", r.pinned.stream_waits},
      {"staging",
       {{"acquires", r.staging.acquires},
        {"hits", r.staging.hits},
        {"hit_rate", r.staging.hit_rate()},
        {"busy_skips", r.staging.busy_skips},
        {"releases", r.staging.releases}}},
      {"bridge",
       {{"round_trips", r.bridge_round_trips},
        {"to_device", r.bridge_to_device},
        {"to_host", r.bridge_to_host}}},
      {"keyed",
       {{"reductions", r.reductions},
        {"acquires", r.keyed.acquires},
        {"hits", r.keyed.hits},
        {"hit_rate", r.keyed.hit_rate()},
        {"stream_handoffs", r.keyed.stream_handoffs},
        {"dropped", r.keyed.dropped}}},
      {"invariant_checks", r.invariant_checks},
      {"leak_check", r.leak_check_passed ? "passed" : "failed"},
      {"stream_order",
       {{"checked", r.stream_order_checked},
        {"operations", r.stream_order.operations},
        {"accesses_checked", r.stream_order.accesses_checked},
        {"violations", r.stream_order.violations}}},
      {"timeline", std::move(timeline)},
      {"peak_snapshot", std::move(snapshots)},
      {"violations", r.violations},
      {"verdict", Verdict(r)},
      {"inconclusive_reason", r.InconclusiveReason()},
      {"ok", r.ok()},
  };
  return j.dump();
}

}  // namespace gpualloc::harness
