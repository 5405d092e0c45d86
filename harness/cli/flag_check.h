// The harness tools' shared command-line contract: a bad flag value, an
// unknown flag, a missing value, a positional argument or a stray "--"
// prints a clear message naming it and exits with status 2 (Abseil's own
// parser would exit with 1, or ignore positional arguments). Values may be
// given as --name=value or --name value.
#ifndef GPUALLOC_HARNESS_CLI_FLAG_CHECK_H_
#define GPUALLOC_HARNESS_CLI_FLAG_CHECK_H_

#include <string>

namespace gpualloc::harness {

// Checks every --name=value in argv against the registered Abseil flags
// before absl::ParseCommandLine runs; exits 2 on the first problem.
void CheckFlagValuesOrExit(const char* program, int argc, char** argv);

// Prints "<program>: <message>" and the --help hint, then exits 2.
[[noreturn]] void ExitWithBadFlag(const char* program, const std::string& message);

// `bazel run` starts tools in the runfiles tree; relative paths the user
// typed mean their working directory.
std::string UserPath(const std::string& path);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_CLI_FLAG_CHECK_H_
