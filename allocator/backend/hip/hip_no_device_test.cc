#include <dlfcn.h>

#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/testing/no_device_check.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(HipBackend, ReportsNoDeviceCleanly) {
  ExpectNoDeviceReportedCleanly(*MakeHipBackend(), "hip", HipBackendCompiledIn());
}

// Where the HIP runtime library is installed (libamdhip64-dev here), the
// backend must load it: "no device" must be the runtime's own answer, not a
// loader failure (an entry point the library does not export once made
// every HIP call fail).
TEST(HipBackend, LoadsTheInstalledRuntime) {
  void* library = dlopen("libamdhip64.so.5", RTLD_NOW | RTLD_LOCAL);
  if (!HipBackendCompiledIn() || library == nullptr) GTEST_SKIP() << "no HIP runtime installed";
  dlclose(library);
  const absl::Status status = MakeHipBackend()->DeviceCount().status();
  if (status.ok()) GTEST_SKIP() << "a HIP device is present";
  EXPECT_NE(status.message().find("hipError"), absl::string_view::npos) << status;
  EXPECT_EQ(status.message().find("cannot load"), absl::string_view::npos) << status;
  EXPECT_EQ(status.message().find("lacks"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace gpualloc
