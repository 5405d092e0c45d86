// //harness:generate_trace — writes a seeded, synthetic allocation trace
// (trace_generator.h) in our binary format.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

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
  const std::string path = absl::GetFlag(FLAGS_out);
  if (path.empty()) harness::ExitWithBadFlag("generate_trace", "--out is required");
  if (absl::GetFlag(FLAGS_events) == 0) harness::ExitWithBadFlag("generate_trace", "--events must be positive");
  std::FILE* out = std::fopen(harness::UserPath(path).c_str(), "wb");
  if (out == nullptr) {
    harness::ExitWithBadFlag("generate_trace",
                             absl::StrFormat("--out: cannot write %s: %s", path, std::strerror(errno)));
  }
  // Streamed: records go out in 1 MiB batches as they are generated, so
  // memory stays bounded whatever --events says; the first failed write
  // stops the generator (a full disk is an error, never a crash).
  std::string batch = EncodeTraceHeader();
  std::size_t written = 0;
  int write_error = 0;
  auto flush = [&]() {
    if (!batch.empty() && std::fwrite(batch.data(), 1, batch.size(), out) != batch.size()) {
      write_error = errno ? errno : EIO;
    }
    batch.clear();
    return write_error == 0;
  };
  harness::GenerateTraceTo(kind, absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_events),
                           [&](const TraceEvent& e) {
                             AppendTraceRecord(e, &batch);
                             ++written;
                             return batch.size() < (1 << 20) || flush();
                           });
  if (write_error == 0) flush();
  if (write_error == 0 && std::fflush(out) != 0) write_error = errno ? errno : EIO;
  if (std::fclose(out) != 0 && write_error == 0) write_error = errno ? errno : EIO;
  if (write_error != 0) {
    std::fprintf(stderr, "generate_trace: writing %s failed after %zu events: %s\n", path.c_str(),
                 written, std::strerror(write_error));
    return 2;
  }
  std::printf("%zu events written to %s\n", written, path.c_str());
  return 0;
}
