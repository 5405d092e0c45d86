#include "allocator/bridge/memory_visibility.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "allocator/common/exception_boundary.h"
#include "allocator/common/status_macros.h"

namespace gpualloc {

absl::string_view MemoryVisibilityName(MemoryVisibility v) {
  switch (v) {
    case MemoryVisibility::kSystemScope: return "system-scope";
    case MemoryVisibility::kDeviceScope: return "device-scope";
    case MemoryVisibility::kExplicitDma: return "explicit-dma";
  }
  return "?";
}

absl::string_view TransferStrategyName(TransferStrategy s) {
  switch (s) {
    case TransferStrategy::kSync: return "sync";
    case TransferStrategy::kAsync: return "async";
    case TransferStrategy::kUnified: return "unified";
    case TransferStrategy::kDmaPolling: return "dma-polling";
  }
  return "?";
}

bool IsWsl2KernelVersion(absl::string_view proc_version) {
  // "Linux version 5.15.90.1-microsoft-standard-WSL2 ..."
  return absl::StrContains(absl::AsciiStrToLower(proc_version), "microsoft") ||
         absl::StrContains(proc_version, "WSL");
}

PlatformInfo DetectPlatform(const std::string& proc_version_path) {
  PlatformInfo info;
  std::ifstream in(proc_version_path);
  if (!in) return info;
  std::stringstream text;
  text << in.rdbuf();
  info.kernel = text.str();
  info.wsl2 = IsWsl2KernelVersion(info.kernel);
  return info;
}

MemoryVisibility DecideVisibility(const DeviceProperties& device, const PlatformInfo& platform) {
  if (!device.supports_managed_memory) return MemoryVisibility::kExplicitDma;
  if (platform.wsl2) return MemoryVisibility::kDeviceScope;  // limited coherence, whatever is claimed
  return device.concurrent_managed_access ? MemoryVisibility::kSystemScope
                                          : MemoryVisibility::kDeviceScope;
}

absl::StatusOr<MemoryVisibility> DetectVisibility(Backend& backend, DeviceIndex device,
                                                  const PlatformInfo& platform) {
  GPUALLOC_ASSIGN_OR_RETURN(DeviceProperties props,
                            CallAtBoundary("device properties", [&] {
                              return backend.GetDeviceProperties(device);
                            }));
  return DecideVisibility(props, platform);
}

TransferStrategy DefaultStrategy(MemoryVisibility visibility) {
  switch (visibility) {
    case MemoryVisibility::kSystemScope: return TransferStrategy::kUnified;
    case MemoryVisibility::kDeviceScope: return TransferStrategy::kAsync;
    case MemoryVisibility::kExplicitDma: return TransferStrategy::kDmaPolling;
  }
  return TransferStrategy::kSync;
}

bool StrategyWorksUnder(TransferStrategy strategy, MemoryVisibility visibility) {
  return strategy != TransferStrategy::kUnified || visibility != MemoryVisibility::kExplicitDma;
}

}  // namespace gpualloc
