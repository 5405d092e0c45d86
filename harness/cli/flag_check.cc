#include "harness/cli/flag_check.h"

#include <cstdio>
#include <cstdlib>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace gpualloc::harness {

void ExitWithBadFlag(const char* program, const std::string& message) {
  std::fprintf(stderr, "%s: %s\nRun with --help for the flags.\n", program, message.c_str());
  std::exit(2);
}

void CheckFlagValuesOrExit(const char* program, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    // Abseil would stop at "--" and silently return the rest, and ignore any
    // positional argument: the tools take none, so either is a mistake.
    if (arg == "--") {
      ExitWithBadFlag(program, "unexpected '--': this tool takes flags only, no positional "
                               "arguments");
    }
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) {
      ExitWithBadFlag(program, absl::StrFormat("unexpected argument '%s': this tool takes flags "
                                               "only (--name=value or --name value)",
                                               arg));
    }
    const std::size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    if (name == "help" || name == "helpfull" || name == "helpshort" || name == "version" ||
        absl::StartsWith(name, "helpon") || name == "helpmatch" || name == "helppackage" ||
        name == "only_check_args") {
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && eq == absl::string_view::npos && absl::StartsWith(name, "no")) {
      absl::CommandLineFlag* negated = absl::FindCommandLineFlag(name.substr(2));
      if (negated != nullptr && negated->IsOfType<bool>()) continue;  // --nofoo
    }
    if (flag == nullptr) ExitWithBadFlag(program, absl::StrFormat("unknown flag --%s", name));
    absl::string_view value;
    if (eq == absl::string_view::npos) {
      if (flag->IsOfType<bool>()) continue;
      // "--name value", which Abseil's parser accepts too.
      if (i + 1 >= argc) ExitWithBadFlag(program, absl::StrFormat("--%s needs a value", name));
      value = argv[++i];
    } else {
      value = arg.substr(eq + 1);
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      ExitWithBadFlag(program, absl::StrFormat("bad value for --%s: %s", name, error));
    }
  }
}

std::string UserPath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.empty() || path[0] == '/' || cwd == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

}  // namespace gpualloc::harness
