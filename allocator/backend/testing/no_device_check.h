// The check every real-runtime backend must pass on a machine without its
// device (every CI runner here): each entry point fails cleanly with
// FailedPrecondition "no <RUNTIME> device" and the runtime's reason, never a
// crash. On a machine with a device the check skips, saying so: the
// gpu-tagged contract test covers that case.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_TESTING_NO_DEVICE_CHECK_H_
#define GPUALLOC_ALLOCATOR_BACKEND_TESTING_NO_DEVICE_CHECK_H_

#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "allocator/backend/backend.h"
#include "gtest/gtest.h"

namespace gpualloc {

// `runtime` is the backend's name ("cuda", "hip"); `compiled_in` whether the
// binary was built with that toolkit. Use it as a test's whole body.
inline void ExpectNoDeviceReportedCleanly(Backend& backend, const std::string& runtime,
                                          bool compiled_in) {
  EXPECT_EQ(backend.name(), runtime);
  absl::StatusOr<int> count = backend.DeviceCount();
  std::printf("%s: compiled in: %s; DeviceCount: %s\n", runtime.c_str(), compiled_in ? "yes" : "no",
              count.ok() ? std::to_string(*count).c_str()
                         : std::string(count.status().message()).c_str());
  const std::string upper = absl::AsciiStrToUpper(runtime);
  if (count.ok()) {
    GTEST_SKIP() << "a " << upper << " device is present; the gpu-tagged contract test covers it";
  }
  EXPECT_EQ(count.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(count.status().message().find("no " + upper + " device"), absl::string_view::npos)
      << count.status();
  EXPECT_FALSE(backend.Malloc(0, 256).ok());
  EXPECT_FALSE(backend.HostAlloc(0, 256).ok());
  EXPECT_FALSE(backend.CreateStream(0).ok());
  EXPECT_FALSE(backend.GetDeviceProperties(0).ok());
}

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_TESTING_NO_DEVICE_CHECK_H_
