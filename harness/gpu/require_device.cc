#include "harness/gpu/require_device.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/hip/hip_backend.h"

namespace gpualloc::harness {

std::unique_ptr<Backend> MakeRealBackend(const std::string& runtime) {
  return runtime == "hip" ? MakeHipBackend() : MakeCudaBackend();
}

absl::Status RequireDevice(const std::string& runtime) {
  if (runtime != "cuda" && runtime != "hip") {
    return absl::InvalidArgumentError(absl::StrCat("unknown GPU runtime '", runtime, "'"));
  }
  absl::StatusOr<int> count = MakeRealBackend(runtime)->DeviceCount();
  if (count.ok() && *count > 0) return absl::OkStatus();
  const std::string upper = absl::AsciiStrToUpper(runtime);
  std::string reason = count.ok() ? "the runtime found none" : std::string(count.status().message());
  const std::string prefix = absl::StrCat("no ", upper, " device: ");
  if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
  return absl::FailedPreconditionError(absl::StrCat(
      prefix, reason, "; this is a GPU run: run it on a machine with a ", upper,
      " device, or leave out --config=gpu"));
}

}  // namespace gpualloc::harness
