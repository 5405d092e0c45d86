#include <cstdio>

#include "allocator/backend/cuda/cuda_backend.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

// On a machine with a device this test has nothing to check and says so; on
// one without (every CI runner here) every entry point must fail cleanly with
// "no CUDA device" and the runtime's reason, never crash.
TEST(CudaBackend, ReportsNoDeviceCleanly) {
  auto backend = MakeCudaBackend();
  EXPECT_EQ(backend->name(), "cuda");
  auto count = backend->DeviceCount();
  std::printf("cuda: compiled in: %s; DeviceCount: %s\n",
              CudaBackendCompiledIn() ? "yes" : "no",
              count.ok() ? std::to_string(*count).c_str() : std::string(count.status().message()).c_str());
  if (count.ok()) GTEST_SKIP() << "a CUDA device is present; the gpu-tagged contract test covers it";
  EXPECT_EQ(count.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(count.status().message().find("no CUDA device"), absl::string_view::npos)
      << count.status();
  EXPECT_FALSE(backend->Malloc(0, 256).ok());
  EXPECT_FALSE(backend->HostAlloc(0, 256).ok());
  EXPECT_FALSE(backend->CreateStream(0).ok());
  EXPECT_FALSE(backend->GetDeviceProperties(0).ok());
}

}  // namespace
}  // namespace gpualloc
