#include "harness/bench/bench_report.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace gpualloc::bench {
namespace {

const BenchResult* Find(const std::vector<BenchResult>& results, const std::string& workload,
                        const std::string& allocator) {
  for (const BenchResult& r : results) {
    if (r.workload == workload && r.allocator == allocator && r.error.empty()) return &r;
  }
  return nullptr;
}

std::optional<double> Counter(const BenchResult* r, const std::string& name) {
  if (r == nullptr) return std::nullopt;
  auto it = r->counters.find(name);
  if (it == r->counters.end()) return std::nullopt;
  return it->second;
}

std::string Ns(double ns) {
  if (ns >= 100000) return absl::StrFormat("%.0f µs", ns / 1000);
  if (ns >= 1000) return absl::StrFormat("%.1f µs", ns / 1000);
  if (ns >= 100) return absl::StrFormat("%.0f", ns);
  return absl::StrFormat("%.1f", ns);
}

// A run's time, or for a memory measurement (one iteration, no meaningful
// time) the share it measured.
std::string Cell(const BenchResult* r) {
  if (r == nullptr) return "—";
  if (auto pct = r->counters.find("metadata_pct"); pct != r->counters.end()) {
    return absl::StrFormat("%.2f%% of managed bytes", pct->second);
  }
  return Ns(r->ns_per_op);
}

// A counter with `digits` decimals, or a dash when the run has none.
std::string Fixed(std::optional<double> value, int digits) {
  return value ? absl::StrFormat("%.*f", digits, *value) : "—";
}

std::string Ratio(const BenchResult* r, const BenchResult* ref) {
  if (r == nullptr || ref == nullptr || ref->ns_per_op <= 0) return "—";
  return absl::StrFormat("%.2f×", r->ns_per_op / ref->ns_per_op);
}

std::string Title(const std::string& workload) {
  static const std::map<std::string, std::string> kTitles = {
      {"pair_256B", "1. pair, 256 B"},
      {"pair_64KiB", "1. pair, 64 KiB"},
      {"pair_4MiB", "1. pair, 4 MiB"},
      {"random", "2. random (RMM-style)"},
      {"random_1t", "3. random, many streams, 1 thread"},
      {"random_2t", "3. random, many streams, 2 threads"},
      {"holes_4096", "4. 1 KiB pair, 4,096 holes"},
      {"holes_16384", "4. 1 KiB pair, 16,384 holes"},
      {"holes_65536", "4. 1 KiB pair, 65,536 holes"},
      {"replay_training", "5. replay, training trace"},
      {"replay_serving", "5. replay, serving trace"},
      {"tracking_pair_256B", "tracking adaptor, pair 256 B"},
      {"tracking_random", "tracking adaptor, random"},
      {"stats_read", "one stats() read"},
      {"metadata_64KiB", "metadata at 64 KiB"},
  };
  auto it = kTitles.find(workload);
  if (it != kTitles.end()) return it->second;
  // random_<n>t beyond two threads: registered where the host has the cores.
  int threads = 0;
  if (workload.size() > 8 && workload.rfind("random_", 0) == 0 && workload.back() == 't' &&
      absl::SimpleAtoi(workload.substr(7, workload.size() - 8), &threads)) {
    return absl::StrFormat("3. random, many streams, %d threads", threads);
  }
  return workload;
}

struct Goal {
  std::string name, measured, target;
  bool met;
};

std::vector<Goal> Goals(const std::vector<BenchResult>& rs) {
  std::vector<Goal> goals;
  auto ns = [&](const std::string& w, const std::string& a) -> std::optional<double> {
    const BenchResult* r = Find(rs, w, a);
    if (r == nullptr) return std::nullopt;
    return r->ns_per_op;
  };
  using Format = std::string (*)(double);
  auto add = [&](std::string name, std::optional<double> value, Format fmt, std::string target,
                 bool (*ok)(double)) {
    if (!value) {
      goals.push_back({std::move(name), "not measured", std::move(target), false});
      return;
    }
    goals.push_back({std::move(name), fmt(*value), std::move(target), ok(*value)});
  };
  const Format nanos = [](double v) { return absl::StrFormat("%.0f ns", v); };
  const Format times = [](double v) { return absl::StrFormat("%.2f×", v); };
  const Format plain = [](double v) { return absl::StrFormat("%.3f", v); };
  const Format percent = [](double v) { return absl::StrFormat("%.2f%%", v); };
  for (const char* stack : {"caching", "caching_front", "size_class"}) {
    for (const char* w : {"pair_256B", "pair_64KiB", "pair_4MiB"}) {
      add(absl::StrCat("cached pair, ", Title(w).substr(9), ": ns per pair (", stack, ")"),
          ns(w, stack), nanos, "≤ 25 ns", [](double v) { return v <= 25; });
    }
  }
  auto ratio = [&](const std::string& w, const std::string& ours,
                   const std::string& ref) -> std::optional<double> {
    auto a = ns(w, ours), b = ns(w, ref);
    if (!a || !b || *b <= 0) return std::nullopt;
    return *a / *b;
  };
  for (const char* ours : {"caching", "caching_front"}) {
    for (const char* w : {"pair_256B", "pair_64KiB", "pair_4MiB", "random"}) {
      add(absl::StrCat(Title(w), ": ", ours, " ÷ mimalloc"), ratio(w, ours, "mimalloc"), times,
          "≤ 2×", [](double v) { return v <= 2; });
      add(absl::StrCat(Title(w), ": ", ours, " ÷ pmr_sync"), ratio(w, ours, "pmr_sync"), times,
          "≤ 0.33×", [](double v) { return v <= 1.0 / 3; });
    }
    add(absl::StrCat(Title("holes_4096"), ": ", ours, " ÷ pmr_sync"),
        ratio("holes_4096", ours, "pmr_sync"), times, "≤ 0.33×",
        [](double v) { return v <= 1.0 / 3; });
  }
  {
    auto a = ns("holes_65536", "caching"), b = ns("holes_4096", "caching");
    add("free holes: time at 65,536 ÷ time at 4,096 (caching)",
        a && b ? std::optional<double>(*a / *b) : std::nullopt, times, "≤ 1.5×",
        [](double v) { return v <= 1.5; });
  }
  for (const char* ours : {"caching", "caching_front"}) {
    auto one = ns("random_1t", ours), two = ns("random_2t", ours);
    add(absl::StrCat("two threads ÷ one thread, throughput (", ours, ", workload 3)"),
        one && two ? std::optional<double>(*one / *two) : std::nullopt, times, "≥ 1.7×",
        [](double v) { return v >= 1.7; });
  }
  for (const char* ours : {"caching", "caching_front"}) {
    for (const char* w : {"replay_training", "replay_serving"}) {
      add(absl::StrCat(Title(w), ": peak reserved ÷ peak live (", ours, ")"),
          Counter(Find(rs, w, ours), "fragmentation"), plain, "≤ 1.10",
          [](double v) { return v > 0 && v <= 1.10; });
    }
  }
  add("workload 2 steady state: device calls per 1,000 operations (caching)",
      Counter(Find(rs, "random", "caching"), "upstream_per_kop"), plain, "< 1",
      [](double v) { return v < 1; });
  for (auto [tracked, base, what] :
       {std::tuple<const char*, const char*, const char*>{"tracking_random", "random",
                                                          "workload 2"},
        {"tracking_pair_256B", "pair_256B", "the cached 256 B pair (worst case)"}}) {
    auto t = ns(tracked, "caching"), b = ns(base, "caching");
    add(absl::StrCat("tracking adaptor (leaks, stacks off) on ", what, ": extra time"),
        t && b ? std::optional<double>((*t / *b - 1) * 100) : std::nullopt, percent, "< 5%",
        [](double v) { return v < 5; });
  }
  {
    // Stats are kept on every operation and cannot be switched off (their
    // updates are inside every number above); what a user adds is reading
    // them. A poll every 100 operations, as a share of those operations.
    auto read = ns("stats_read", "caching"), op = ns("random", "caching");
    add("stats: one stats() poll per 100 operations of workload 2, share of their time",
        read && op ? std::optional<double>(*read / (100 * *op) * 100) : std::nullopt, percent,
        "< 2%", [](double v) { return v < 2; });
  }
  add("pinned host allocator, workload 2 steady state (default bound): device calls per 1,000 "
      "operations",
      Counter(Find(rs, "random", "pinned_host"), "upstream_per_kop"), plain, "< 10",
      [](double v) { return v < 10; });
  add("metadata: host bytes per managed byte at 64 KiB allocations (caching)",
      Counter(Find(rs, "metadata_64KiB", "caching"), "metadata_pct"), percent, "< 1%",
      [](double v) { return v < 1; });
  return goals;
}

}  // namespace

void CollectingReporter::ReportRuns(const std::vector<Run>& runs) {
  ConsoleReporter::ReportRuns(runs);
  for (const Run& run : runs) {
    if (run.run_type == Run::RT_Aggregate) continue;
    std::vector<std::string> parts = absl::StrSplit(run.run_name.function_name, '/');
    BenchResult r;
    r.workload = parts[0];
    r.allocator = parts.size() > 1 ? parts[1] : "";
    if (run.error_occurred) {
      r.error = run.error_message;
    } else {
      for (const auto& [name, counter] : run.counters) r.counters[name] = counter.value;
      auto ips = r.counters.find("items_per_second");
      r.ns_per_op = ips != r.counters.end() && ips->second > 0 ? 1e9 / ips->second
                                                               : run.GetAdjustedRealTime();
    }
    results_.push_back(std::move(r));
  }
}

std::string MarkdownReport(const std::vector<BenchResult>& results,
                           const std::vector<std::string>& workloads,
                           const std::vector<std::string>& allocators) {
  std::string md;
  absl::StrAppend(&md, "### Time per operation (ns; lower is better)\n\n| workload |");
  for (const std::string& a : allocators) absl::StrAppend(&md, " ", a, " |");
  absl::StrAppend(&md, "\n|---|");
  for (std::size_t i = 0; i < allocators.size(); ++i) absl::StrAppend(&md, "---:|");
  absl::StrAppend(&md, "\n");
  for (const std::string& w : workloads) {
    absl::StrAppend(&md, "| ", Title(w), " |");
    for (const std::string& a : allocators) {
      absl::StrAppend(&md, " ", Cell(Find(results, w, a)), " |");
    }
    absl::StrAppend(&md, "\n");
  }

  absl::StrAppend(&md,
                  "\n### Every run with its ratios\n\n"
                  "Ratio = this allocator's time ÷ the reference's time on the same workload "
                  "in the same run (below 1× is faster than the reference).\n\n"
                  "| workload | allocator | ns/op | ÷ mimalloc | ÷ pmr_sync | device calls "
                  "/ 1,000 ops | peak reserved ÷ peak live |\n|---|---|---:|---:|---:|---:|---:|\n");
  for (const std::string& w : workloads) {
    const BenchResult* mi = Find(results, w, "mimalloc");
    const BenchResult* pmr = Find(results, w, "pmr_sync");
    for (const std::string& a : allocators) {
      const BenchResult* r = Find(results, w, a);
      if (r == nullptr) continue;
      absl::StrAppend(&md, "| ", Title(w), " | ", a, " | ", Cell(r), " | ", Ratio(r, mi), " | ",
                      Ratio(r, pmr), " | ", Fixed(Counter(r, "upstream_per_kop"), 3), " | ",
                      Fixed(Counter(r, "fragmentation"), 3), " |\n");
    }
  }
  std::string skipped;
  for (const BenchResult& r : results) {
    if (!r.error.empty()) absl::StrAppend(&skipped, "- ", r.workload, "/", r.allocator, ": ", r.error, "\n");
  }
  if (!skipped.empty()) absl::StrAppend(&md, "\nNot run:\n\n", skipped);

  std::string bounds;
  for (const BenchResult& r : results) {
    std::size_t mib = 0;
    if (!r.error.empty() || !absl::StartsWith(r.workload, "pinned_bound_") ||
        !absl::SimpleAtoi(absl::StripSuffix(absl::StripPrefix(r.workload, "pinned_bound_"), "MiB"),
                          &mib)) {
      continue;
    }
    absl::StrAppend(&bounds, "| ", mib, " MiB | ", Cell(&r), " | ",
                    Fixed(Counter(&r, "upstream_per_kop"), 3), " | ",
                    Fixed(Counter(&r, "fragmentation"), 2), " |\n");
  }
  if (!bounds.empty()) {
    absl::StrAppend(&md,
                    "\n### Pinned host allocator: the cache bound's effect (workload 2)\n\n"
                    "| cache_limit_bytes | ns/op | device calls / 1,000 ops | peak pinned ÷ "
                    "peak live |\n|---:|---:|---:|---:|\n",
                    bounds);
  }

  absl::StrAppend(&md, "\n### Goals\n\n| goal | measured | target | met |\n|---|---:|---:|:---:|\n");
  for (const Goal& g : Goals(results)) {
    absl::StrAppend(&md, "| ", g.name, " | ", g.measured, " | ", g.target, " | ",
                    g.met ? "yes" : "**no**", " |\n");
  }
  return md;
}

std::string SvgPlot(const std::vector<BenchResult>& results,
                    const std::vector<std::string>& workloads,
                    const std::vector<std::string>& allocators) {
  static const char* const kColors[] = {"#1b9e77", "#66c2a5", "#2c7fb8", "#a6bddb", "#41ae76",
                                        "#b2e2b2", "#888888", "#bbbbbb", "#d95f02", "#e7298a",
                                        "#7570b3", "#e6ab02", "#a6761d", "#666666"};
  constexpr std::size_t kColorCount = sizeof(kColors) / sizeof(kColors[0]);
  constexpr int kLeft = 210, kWidth = 900, kBar = 9, kGap = 14, kTop = 40;
  double max_ns = 10;
  for (const BenchResult& r : results) {
    if (std::find(workloads.begin(), workloads.end(), r.workload) != workloads.end()) {
      max_ns = std::max(max_ns, r.ns_per_op);
    }
  }
  const double decades = std::ceil(std::log10(max_ns));
  auto x = [&](double ns) {
    return kLeft + (kWidth - kLeft - 20) * std::log10(std::max(ns, 1.0)) / decades;
  };
  const int group = static_cast<int>(allocators.size()) * kBar + kGap;
  const int height = kTop + static_cast<int>(workloads.size()) * group + 30 +
                     static_cast<int>((allocators.size() + 3) / 4) * 18;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%d\" y=\"18\" font-size=\"14\">ns per operation by "
      "allocator (log scale; lower is better)</text>\n",
      kWidth, height, kLeft);
  for (int d = 0; d <= decades; ++d) {
    const double xx = x(std::pow(10.0, d));
    absl::StrAppend(&svg, absl::StrFormat(
                              "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>"
                              "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">1e%d</text>\n",
                              xx, kTop - 6, xx, kTop + static_cast<int>(workloads.size()) * group,
                              xx, kTop - 10, d));
  }
  for (std::size_t wi = 0; wi < workloads.size(); ++wi) {
    const int y0 = kTop + static_cast<int>(wi) * group;
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
                                          kLeft - 6, y0 + group / 2, Title(workloads[wi])));
    for (std::size_t ai = 0; ai < allocators.size(); ++ai) {
      const BenchResult* r = Find(results, workloads[wi], allocators[ai]);
      if (r == nullptr) continue;
      absl::StrAppend(&svg, absl::StrFormat(
                                "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\">"
                                "<title>%s / %s: %.1f ns</title></rect>\n",
                                kLeft, y0 + static_cast<int>(ai) * kBar, x(r->ns_per_op) - kLeft,
                                kBar - 1, kColors[ai % kColorCount], workloads[wi], allocators[ai],
                                r->ns_per_op));
    }
  }
  const int legend_y = kTop + static_cast<int>(workloads.size()) * group + 16;
  for (std::size_t ai = 0; ai < allocators.size(); ++ai) {
    const int lx = kLeft + static_cast<int>(ai % 4) * 170;
    const int ly = legend_y + static_cast<int>(ai / 4) * 18;
    absl::StrAppend(&svg, absl::StrFormat("<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"10\" "
                                          "fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
                                          lx, ly, kColors[ai % kColorCount], lx + 16, ly + 9,
                                          allocators[ai]));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace gpualloc::bench
