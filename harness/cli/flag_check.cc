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
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
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
    if (eq == absl::string_view::npos) {
      if (!flag->IsOfType<bool>()) ExitWithBadFlag(program, absl::StrFormat("--%s needs a value", name));
      continue;
    }
    std::string error;
    if (!flag->ParseFrom(arg.substr(eq + 1), &error)) {
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
