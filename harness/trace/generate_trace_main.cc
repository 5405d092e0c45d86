// //harness:generate_trace — writes a seeded, synthetic allocation trace
// (trace_generator.h) in our binary format.
#include <cstdio>
#include <fstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "harness/cli/flag_check.h"
#include "harness/trace/trace_generator.h"

ABSL_FLAG(std::string, kind, "training", "training or serving");
ABSL_FLAG(std::uint64_t, seed, 1, "generator seed");
ABSL_FLAG(std::size_t, events, 100000, "about this many events");
ABSL_FLAG(std::string, out, "", "output file (required)");

int main(int argc, char** argv) {
  using namespace gpualloc;
  absl::SetProgramUsageMessage("Writes a synthetic allocation trace.");
  harness::CheckFlagValuesOrExit("generate_trace", argc, argv);
  absl::ParseCommandLine(argc, argv);
  harness::TraceKind kind;
  if (!harness::ParseTraceKind(absl::GetFlag(FLAGS_kind), &kind)) {
    harness::ExitWithBadFlag("generate_trace", "--kind must be training or serving");
  }
  if (absl::GetFlag(FLAGS_out).empty()) harness::ExitWithBadFlag("generate_trace", "--out is required");
  const std::vector<TraceEvent> events =
      harness::GenerateTrace(kind, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_events));
  std::string bytes = EncodeTraceHeader();
  for (const TraceEvent& e : events) AppendTraceRecord(e, &bytes);
  std::ofstream out(harness::UserPath(absl::GetFlag(FLAGS_out)), std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) harness::ExitWithBadFlag("generate_trace", "cannot write --out");
  std::printf("%zu events written to %s\n", events.size(), absl::GetFlag(FLAGS_out).c_str());
  return 0;
}
