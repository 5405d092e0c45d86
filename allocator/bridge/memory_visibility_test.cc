#include "allocator/bridge/memory_visibility.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "allocator/backend/sim/sim_backend.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(MemoryVisibility, TellsWslKernelsFromNativeOnes) {
  EXPECT_TRUE(IsWsl2KernelVersion(
      "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@941d701f84f1) (gcc (GCC) 11.2.0)"));
  EXPECT_TRUE(IsWsl2KernelVersion("Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com)"));
  EXPECT_FALSE(IsWsl2KernelVersion(
      "Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14))"));
  // A kernel built from Microsoft's WSL2 tree under its own name.
  EXPECT_TRUE(IsWsl2KernelVersion("Linux version 6.6.36.6-WSL2-custom (user@host) (gcc 13.2.0)"));
  EXPECT_FALSE(IsWsl2KernelVersion(""));
}

TEST(MemoryVisibility, DetectsThePlatformFromProcVersionAndTreatsNoFileAsNative) {
  const std::string path = ::testing::TempDir() + "/proc_version";
  {
    std::ofstream out(path);
    out << "Linux version 5.15.90.1-microsoft-standard-WSL2 (oe-user@oe-host)\n";
  }
  PlatformInfo wsl = DetectPlatform(path);
  EXPECT_TRUE(wsl.wsl2);
  EXPECT_NE(wsl.kernel.find("WSL2"), std::string::npos);
  PlatformInfo missing = DetectPlatform(path + ".absent");
  EXPECT_FALSE(missing.wsl2);
  EXPECT_EQ(missing.kernel, "");
  std::remove(path.c_str());
}

TEST(MemoryVisibility, DecidesFromTheDevicesPropertiesAndThePlatform) {
  DeviceProperties p;
  p.supports_managed_memory = true;
  p.concurrent_managed_access = true;
  EXPECT_EQ(DecideVisibility(p, PlatformInfo{}), MemoryVisibility::kSystemScope);
  EXPECT_EQ(DecideVisibility(p, PlatformInfo{true, "wsl"}), MemoryVisibility::kDeviceScope)
      << "WSL2 limits coherence whatever the device claims";
  p.concurrent_managed_access = false;
  EXPECT_EQ(DecideVisibility(p, PlatformInfo{}), MemoryVisibility::kDeviceScope);
  p.supports_managed_memory = false;
  EXPECT_EQ(DecideVisibility(p, PlatformInfo{}), MemoryVisibility::kExplicitDma);
  EXPECT_EQ(DecideVisibility(p, PlatformInfo{true, "wsl"}), MemoryVisibility::kExplicitDma);
}

TEST(MemoryVisibility, DetectsWhatTheSimulatedDeviceReports) {
  SimOptions o = SimOptions::WithDevices(3, 64 << 20);
  o.devices[1].concurrent_managed_access = false;
  SimBackend sim(o);
  EXPECT_EQ(DetectVisibility(sim, 0, PlatformInfo{}).value(), MemoryVisibility::kSystemScope);
  EXPECT_EQ(DetectVisibility(sim, 1, PlatformInfo{}).value(), MemoryVisibility::kDeviceScope);
  EXPECT_EQ(DetectVisibility(sim, 0, PlatformInfo{true, ""}).value(), MemoryVisibility::kDeviceScope);
  EXPECT_FALSE(DetectVisibility(sim, 7, PlatformInfo{}).ok());
  SimOptions no_managed = SimOptions::WithDevices(1, 64 << 20);
  no_managed.managed_memory = false;
  SimBackend dma(no_managed);
  EXPECT_EQ(DetectVisibility(dma, 0, PlatformInfo{}).value(), MemoryVisibility::kExplicitDma);
}

TEST(MemoryVisibility, EachVisibilityHasAStrategyThatWorksUnderIt) {
  for (MemoryVisibility v : {MemoryVisibility::kSystemScope, MemoryVisibility::kDeviceScope,
                             MemoryVisibility::kExplicitDma}) {
    EXPECT_TRUE(StrategyWorksUnder(DefaultStrategy(v), v)) << MemoryVisibilityName(v);
  }
  EXPECT_EQ(DefaultStrategy(MemoryVisibility::kSystemScope), TransferStrategy::kUnified);
  EXPECT_EQ(DefaultStrategy(MemoryVisibility::kDeviceScope), TransferStrategy::kAsync);
  EXPECT_EQ(DefaultStrategy(MemoryVisibility::kExplicitDma), TransferStrategy::kDmaPolling);
  EXPECT_FALSE(StrategyWorksUnder(TransferStrategy::kUnified, MemoryVisibility::kExplicitDma));
  EXPECT_TRUE(StrategyWorksUnder(TransferStrategy::kSync, MemoryVisibility::kExplicitDma));
}

}  // namespace
}  // namespace gpualloc
