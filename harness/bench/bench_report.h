// Turns the suite's runs into the tables of docs/performance.md: ns/op per
// workload and allocator, each run's ratio to mimalloc and to
// std::pmr::synchronized_pool_resource, the goals of the suite with what was
// measured, and an SVG plot of ns/op by allocator.
#ifndef GPUALLOC_HARNESS_BENCH_BENCH_REPORT_H_
#define GPUALLOC_HARNESS_BENCH_BENCH_REPORT_H_

#include <map>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace gpualloc::bench {

struct BenchResult {
  std::string workload;   // "pair_256B", "random_2t", ...
  std::string allocator;  // "caching", "mimalloc", ...
  double ns_per_op = 0;   // wall time per operation, all threads together
  std::map<std::string, double> counters;
  std::string error;      // set when the run was skipped
};

// Prints as the console reporter does and keeps every run.
class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  CollectingReporter() : ConsoleReporter(OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override;
  const std::vector<BenchResult>& results() const { return results_; }

 private:
  std::vector<BenchResult> results_;
};

// The Markdown section: tables and goals. `order` lists allocators as columns.
std::string MarkdownReport(const std::vector<BenchResult>& results,
                           const std::vector<std::string>& workloads,
                           const std::vector<std::string>& allocators);

// A self-contained SVG: ns/op (log scale) by allocator for `workloads`.
std::string SvgPlot(const std::vector<BenchResult>& results,
                    const std::vector<std::string>& workloads,
                    const std::vector<std::string>& allocators);

}  // namespace gpualloc::bench

#endif  // GPUALLOC_HARNESS_BENCH_BENCH_REPORT_H_
