#include "allocator/backend/hip/hip_runtime_loader.h"

#ifdef GPUALLOC_HAVE_HIP
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace gpualloc {
namespace {

// A signature in the table that differs from the header's fails the build:
// the cast picks the exact overload (hipMalloc and others have C++ template
// overloads) and there is no conversion between function pointer types. The
// operand is unevaluated, so nothing here links against the runtime.
#define GPUALLOC_HIP_CHECK_SIGNATURE(name, ret, params) \
  using name##_signature_matches_header = decltype(static_cast<ret(*) params>(&::name));
GPUALLOC_HIP_RUNTIME_FUNCTIONS(GPUALLOC_HIP_CHECK_SIGNATURE)
GPUALLOC_HIP_OPTIONAL_FUNCTIONS(GPUALLOC_HIP_CHECK_SIGNATURE)
#undef GPUALLOC_HIP_CHECK_SIGNATURE

absl::StatusOr<const HipRuntime*> Load() {
  std::vector<std::string> candidates;
  if (const char* chosen = std::getenv("GPUALLOC_HIP_LIBRARY"); chosen != nullptr && *chosen) {
    candidates.push_back(chosen);
  } else {
    candidates = {"libamdhip64.so.5", "libamdhip64.so"};
  }
  std::vector<std::string> reasons;
  void* library = nullptr;
  std::string loaded;
  for (const std::string& name : candidates) {
    library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library != nullptr) {
      loaded = name;
      break;
    }
    const char* why = dlerror();
    reasons.push_back(why != nullptr ? why : name + ": unknown dlopen failure");
  }
  if (library == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no HIP device: cannot load the HIP runtime (", absl::StrJoin(reasons, "; "), ")"));
  }
  auto* runtime = new HipRuntime;  // Lives as long as the library: the process.
#define GPUALLOC_HIP_RESOLVE(name, ret, params)                                              \
  runtime->name = reinterpret_cast<ret(*) params>(dlsym(library, #name));                   \
  if (runtime->name == nullptr) {                                                            \
    delete runtime;                                                                          \
    return absl::FailedPreconditionError(absl::StrCat(                                       \
        "no HIP device: ", loaded, " lacks ", #name, " (a HIP runtime older than 5.2?)"));   \
  }
  GPUALLOC_HIP_RUNTIME_FUNCTIONS(GPUALLOC_HIP_RESOLVE)
#undef GPUALLOC_HIP_RESOLVE
#define GPUALLOC_HIP_RESOLVE_OPTIONAL(name, ret, params) \
  runtime->name = reinterpret_cast<ret(*) params>(dlsym(library, #name));
  GPUALLOC_HIP_OPTIONAL_FUNCTIONS(GPUALLOC_HIP_RESOLVE_OPTIONAL)
#undef GPUALLOC_HIP_RESOLVE_OPTIONAL
  return runtime;
}

}  // namespace

absl::StatusOr<const HipRuntime*> LoadHipRuntime() {
  static const absl::StatusOr<const HipRuntime*> runtime = Load();
  return runtime;
}

}  // namespace gpualloc

#endif  // GPUALLOC_HAVE_HIP
