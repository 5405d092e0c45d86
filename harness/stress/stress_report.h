// The stress report in the forms people and machines read: a text summary,
// JSON (--report_json).
#ifndef GPUALLOC_HARNESS_STRESS_STRESS_REPORT_H_
#define GPUALLOC_HARNESS_STRESS_STRESS_REPORT_H_

#include <string>

#include "harness/stress/stress_runner.h"

namespace gpualloc::harness {

// The human-readable summary printed at the end of a run.
std::string ReportText(const StressReport& report);
// Everything in the report, for dashboards and comparisons: every figure the
// text states, the timeline, the segment map at peak, and the verdict.
std::string ReportJson(const StressReport& report);
// "pass", "fail" (a violation) or "inconclusive" (nothing much exercised).
std::string Verdict(const StressReport& report);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_STRESS_STRESS_REPORT_H_
