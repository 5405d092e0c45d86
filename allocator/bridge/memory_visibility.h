// How the host and a device see each other's memory, and how data should
// cross between them: ringkernel's MemoryVisibility and TransferStrategy,
// decided from what the backend reports of the device and from the platform
// (WSL2, whose GPU memory coherence is limited, is told by /proc/version).
//
//   PlatformInfo platform = DetectPlatform();           // reads /proc/version
//   MemoryVisibility v = DetectVisibility(*backend, 0, platform).value();
//   TransferStrategy s = DefaultStrategy(v);
//
// Tests override either part: pass a PlatformInfo of their own, or give the
// sim device the properties they want (SimDeviceConfig).
#ifndef GPUALLOC_ALLOCATOR_BRIDGE_MEMORY_VISIBILITY_H_
#define GPUALLOC_ALLOCATOR_BRIDGE_MEMORY_VISIBILITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "allocator/backend/backend.h"

namespace gpualloc {

enum class MemoryVisibility {
  // Host and device use managed memory at the same time and see each
  // other's writes (system-scope atomics work): native Linux on a device
  // with concurrent managed access.
  kSystemScope,
  // Managed memory exists, but the host may touch it only while the device
  // is idle: every exchange needs an explicit synchronisation (WSL2, or a
  // device without concurrent managed access).
  kDeviceScope,
  // No managed memory: data crosses only by explicit copies (DMA).
  kExplicitDma,
};

enum class TransferStrategy {
  kSync,        // blocking copies
  kAsync,       // copies on the bridge's stream, completed by an event
  kUnified,     // no copy: the device ring is managed memory the host writes
  kDmaPolling,  // async copies whose completion the host polls at an interval
};

absl::string_view MemoryVisibilityName(MemoryVisibility v);
absl::string_view TransferStrategyName(TransferStrategy s);

struct PlatformInfo {
  bool wsl2 = false;
  std::string kernel;  // what /proc/version said ("" if unreadable)
};

// True if a /proc/version text names Microsoft's kernel (WSL1 and WSL2).
bool IsWsl2KernelVersion(absl::string_view proc_version);
// Reads `proc_version_path`. An unreadable file means a native platform
// (not Linux, or /proc not mounted).
PlatformInfo DetectPlatform(const std::string& proc_version_path = "/proc/version");

// The decision, from the device's properties and the platform:
//  - WSL2: kDeviceScope if the device has managed memory, else kExplicitDma
//    (whatever the device claims of concurrent access);
//  - concurrent managed access: kSystemScope;
//  - managed memory without concurrent access: kDeviceScope;
//  - no managed memory: kExplicitDma.
MemoryVisibility DecideVisibility(const DeviceProperties& device, const PlatformInfo& platform);
// The same from the backend's report of `device` (its error if it has none).
absl::StatusOr<MemoryVisibility> DetectVisibility(Backend& backend, DeviceIndex device,
                                                  const PlatformInfo& platform);

// The strategy each visibility calls for: kUnified where host and device
// share managed memory coherently, kAsync where they share it only between
// synchronisations, kDmaPolling where only copies cross.
TransferStrategy DefaultStrategy(MemoryVisibility visibility);
// Whether `strategy` can work under `visibility` (kUnified needs managed
// memory; every other strategy works everywhere).
bool StrategyWorksUnder(TransferStrategy strategy, MemoryVisibility visibility);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BRIDGE_MEMORY_VISIBILITY_H_
