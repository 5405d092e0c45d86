// The stress report as one self-contained HTML page (--report_html): inline
// SVG plots, no scripts, no fonts or files from anywhere else, so it opens
// offline and can be attached to a bug.
//
//   #memory-plot         allocated and reserved bytes over time
//   #latency-plot        allocate and free latency histograms (log scale)
//   #fragmentation-plot  largest free block / free bytes over time
//   #segment-map         every segment at peak reserved, blocks by state
#ifndef GPUALLOC_HARNESS_STRESS_STRESS_HTML_H_
#define GPUALLOC_HARNESS_STRESS_STRESS_HTML_H_

#include <string>

#include "harness/stress/stress_runner.h"

namespace gpualloc::harness {

std::string ReportHtml(const StressReport& report);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_STRESS_STRESS_HTML_H_
