#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/testing/no_device_check.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(CudaBackend, ReportsNoDeviceCleanly) {
  ExpectNoDeviceReportedCleanly(*MakeCudaBackend(), "cuda", CudaBackendCompiledIn());
}

}  // namespace
}  // namespace gpualloc
