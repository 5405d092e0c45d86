// Device: which runtime (sim, CUDA, HIP) and which device of it.
#ifndef GPUALLOC_ALLOCATOR_CONTEXT_DEVICE_H_
#define GPUALLOC_ALLOCATOR_CONTEXT_DEVICE_H_

#include <string>

#include "absl/strings/string_view.h"
#include "allocator/backend/types.h"

namespace gpualloc {

enum class DeviceType { kSim = 0, kCuda = 1, kHip = 2 };
inline constexpr int kDeviceTypeCount = 3;

absl::string_view DeviceTypeName(DeviceType type);
bool ParseDeviceType(absl::string_view name, DeviceType* type);

struct Device {
  DeviceType type = DeviceType::kSim;
  DeviceIndex index = 0;

  friend bool operator==(const Device&, const Device&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Device& d) {
    return H::combine(std::move(h), static_cast<int>(d.type), d.index);
  }
  // "sim:0", "cuda:1".
  std::string ToString() const;
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_CONTEXT_DEVICE_H_
