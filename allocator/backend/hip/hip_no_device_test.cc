#include "allocator/backend/hip/hip_backend.h"
#include "allocator/backend/testing/no_device_check.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(HipBackend, ReportsNoDeviceCleanly) {
  ExpectNoDeviceReportedCleanly(*MakeHipBackend(), "hip", HipBackendCompiledIn());
}

}  // namespace
}  // namespace gpualloc
