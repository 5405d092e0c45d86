#include "harness/stress/stress_html.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "harness/stress/stress_report.h"

namespace gpualloc::harness {
namespace {

constexpr int kWidth = 900;
constexpr int kHeight = 260;
constexpr int kMargin = 50;

std::string Escape(absl::string_view s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

struct Series {
  std::string name;
  std::string color;
  std::vector<std::pair<double, double>> points;
};

// A line plot with axes and a legend; y from 0 to the largest value.
std::string LinePlot(const std::string& id, const std::string& title, const std::string& y_unit,
                     const std::vector<Series>& series) {
  double max_x = 1e-9, max_y = 1e-9;
  for (const Series& s : series) {
    for (const auto& [x, y] : s.points) {
      max_x = std::max(max_x, x);
      max_y = std::max(max_y, y);
    }
  }
  std::string svg = absl::StrFormat(
      "<svg id=\"%s\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
      "<title>%s</title><rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>",
      id, kWidth, kHeight, kWidth, kHeight, Escape(title));
  absl::StrAppendFormat(&svg,
                        "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>"
                        "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>",
                        kMargin, kHeight - kMargin, kWidth - 10, kHeight - kMargin, kMargin, 10,
                        kMargin, kHeight - kMargin);
  absl::StrAppendFormat(&svg,
                        "<text x=\"%d\" y=\"%d\" font-size=\"11\">%.3g %s</text>"
                        "<text x=\"%d\" y=\"%d\" font-size=\"11\">%.1f s</text>",
                        2, 20, max_y, Escape(y_unit), kWidth - 60, kHeight - kMargin + 20, max_x);
  int legend_y = 20;
  for (const Series& s : series) {
    std::string points;
    for (const auto& [x, y] : s.points) {
      absl::StrAppendFormat(&points, "%.1f,%.1f ", kMargin + x / max_x * (kWidth - kMargin - 10),
                            (kHeight - kMargin) - y / max_y * (kHeight - kMargin - 10));
    }
    absl::StrAppendFormat(&svg,
                          "<polyline class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" "
                          "points=\"%s\"/><text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"%s\">%s</text>",
                          s.color, points, kWidth - 200, legend_y, s.color, Escape(s.name));
    legend_y += 16;
  }
  return svg + "</svg>";
}

std::string LatencyPlot(const StressReport& r) {
  struct Bars {
    const LatencyHistogram* h;
    std::string name, color;
  };
  const std::vector<Bars> bars = {{&r.allocate_ns, "allocate", "#1f77b4"},
                                  {&r.free_ns, "free", "#ff7f0e"}};
  double max_count = 1;
  double max_log = 1;
  for (const Bars& b : bars) {
    for (const auto& [upper, count] : b.h->Buckets()) {
      max_count = std::max(max_count, static_cast<double>(count));
      max_log = std::max(max_log, std::log10(static_cast<double>(upper) + 1));
    }
  }
  std::string svg = absl::StrFormat(
      "<svg id=\"latency-plot\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
      "<title>latency histogram</title><rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>"
      "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>",
      kWidth, kHeight, kWidth, kHeight, kMargin, kHeight - kMargin, kWidth - 10, kHeight - kMargin);
  for (int decade = 0; decade <= static_cast<int>(max_log); ++decade) {
    const double x = kMargin + decade / max_log * (kWidth - kMargin - 10);
    absl::StrAppendFormat(&svg, "<text x=\"%.0f\" y=\"%d\" font-size=\"11\">1e%d ns</text>", x,
                          kHeight - kMargin + 16, decade);
  }
  int legend_y = 20;
  for (std::size_t i = 0; i < bars.size(); ++i) {
    for (const auto& [upper, count] : bars[i].h->Buckets()) {
      const double x = kMargin + std::log10(static_cast<double>(upper) + 1) / max_log * (kWidth - kMargin - 10);
      const double h = count / max_count * (kHeight - kMargin - 10);
      absl::StrAppendFormat(&svg,
                            "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"3\" height=\"%.1f\" "
                            "fill=\"%s\" opacity=\"0.7\"/>",
                            x + i * 3, (kHeight - kMargin) - h, std::max(h, 0.5), bars[i].color);
    }
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"%s\">%s</text>",
                          kWidth - 150, legend_y, bars[i].color, bars[i].name);
    legend_y += 16;
  }
  return svg + "</svg>";
}

std::string SegmentMap(const StressReport& r) {
  constexpr int kRowHeight = 14;
  constexpr std::size_t kMaxRows = 200;
  std::size_t rows = 0, largest = 1;
  for (const MemorySnapshot& s : r.peak_snapshot) {
    rows += s.segments.size();
    for (const SegmentSnapshot& seg : s.segments) largest = std::max(largest, seg.size);
  }
  rows = std::min(rows, kMaxRows);
  const int height = static_cast<int>(rows) * kRowHeight + 30;
  std::string svg = absl::StrFormat(
      "<svg id=\"segment-map\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">"
      "<title>segments at peak reserved</title><rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>"
      "<text x=\"2\" y=\"14\" font-size=\"12\">blue allocated, grey free, orange waiting on "
      "streams; width to scale (widest %d bytes)</text>",
      kWidth, height, kWidth, height, largest);
  std::size_t row = 0;
  for (const MemorySnapshot& s : r.peak_snapshot) {
    for (const SegmentSnapshot& seg : s.segments) {
      if (row >= kMaxRows) break;
      const double y = 24 + row * kRowHeight;
      const double scale = static_cast<double>(kWidth - 120) / largest;
      absl::StrAppendFormat(&svg, "<text x=\"2\" y=\"%.0f\" font-size=\"10\">dev %d %s</text>",
                            y + 10, s.device, seg.small_pool ? "small" : "large");
      for (const BlockSnapshot& b : seg.blocks) {
        const char* color = b.state == BlockState::kAllocated ? "#1f77b4"
                            : b.state == BlockState::kFree    ? "#cccccc"
                                                              : "#ff7f0e";
        absl::StrAppendFormat(&svg,
                              "<rect class=\"block\" x=\"%.1f\" y=\"%.0f\" width=\"%.2f\" "
                              "height=\"%d\" fill=\"%s\" stroke=\"#fff\" stroke-width=\"0.3\"/>",
                              110 + (b.address - seg.address) * scale, y,
                              std::max(b.size * scale, 0.5), kRowHeight - 3, color);
      }
      ++row;
    }
  }
  return svg + "</svg>";
}

}  // namespace

std::string ReportHtml(const StressReport& r) {
  Series allocated{"allocated", "#1f77b4", {}}, reserved{"reserved", "#d62728", {}};
  Series fragmentation{"largest free block / free bytes", "#2ca02c", {}};
  for (const TimelineSample& s : r.timeline) {
    allocated.points.emplace_back(s.t_s, s.allocated / 1048576.0);
    reserved.points.emplace_back(s.t_s, s.reserved / 1048576.0);
    fragmentation.points.emplace_back(s.t_s, s.largest_free_over_free);
  }
  std::string html = absl::StrCat(
      "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>gpualloc stress report</title><style>"
      "body{font-family:sans-serif;margin:24px;color:#222}"
      "pre{background:#f6f6f6;padding:12px}h2{margin-top:28px}"
      ".pass{color:#2a7d2a}.fail{color:#b00}</style></head><body>",
      "<h1>gpualloc stress report</h1>",
      absl::StrFormat("<p class=\"%s\" id=\"result\">%s</p>", r.ok() ? "pass" : "fail",
                      r.ok() ? "PASS: every invariant held, no leak"
                             : Escape(absl::StrCat("FAIL: ", r.violations.front()))),
      absl::StrFormat(
          "<p id=\"stream-order\">Stream order: %s</p>",
          r.stream_order_checked
              ? absl::StrFormat("%d operations and %d accesses checked by happens-before, %d "
                                "stream-ordering violations",
                                r.stream_order.operations, r.stream_order.accesses_checked,
                                r.stream_order.violations)
              : std::string("not checked")),
      "<pre id=\"summary\">", Escape(ReportText(r)), "</pre>",
      "<h2>Memory over time (MiB)</h2>", LinePlot("memory-plot", "memory", "MiB", {allocated, reserved}),
      "<h2>Allocate and free latency</h2>", LatencyPlot(r),
      "<h2>Fragmentation over time</h2>",
      LinePlot("fragmentation-plot", "fragmentation", "", {fragmentation}),
      "<h2>Segments at peak reserved</h2>", SegmentMap(r),
      "<p>Reproduce: <code>./bazelw run //harness:stress -- ", Escape(r.config.ToFlags()),
      "</code></p></body></html>\n");
  return html;
}

}  // namespace gpualloc::harness
