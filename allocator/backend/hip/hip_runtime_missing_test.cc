#include <string>

#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/testing/no_device_check.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

// GPUALLOC_HIP_LIBRARY names a library that does not exist (see BUILD).
TEST(HipBackend, MissingRuntimeLibraryIsNoDeviceNamingTheLibrary) {
  std::unique_ptr<Backend> backend = MakeHipBackend();
  ExpectNoDeviceReportedCleanly(*backend, "hip", HipBackendCompiledIn());
  if (!HipBackendCompiledIn()) GTEST_SKIP() << "built without HIP headers";
  const absl::Status status = backend->DeviceCount().status();
  EXPECT_NE(status.message().find("cannot load the HIP runtime"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find("/nonexistent/libamdhip64.so.5"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace gpualloc
