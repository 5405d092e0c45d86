#include "allocator/context/device.h"

#include "absl/strings/str_cat.h"

namespace gpualloc {

absl::string_view DeviceTypeName(DeviceType type) {
  switch (type) {
    case DeviceType::kSim: return "sim";
    case DeviceType::kCuda: return "cuda";
    case DeviceType::kHip: return "hip";
  }
  return "unknown";
}

bool ParseDeviceType(absl::string_view name, DeviceType* type) {
  for (DeviceType t : {DeviceType::kSim, DeviceType::kCuda, DeviceType::kHip}) {
    if (DeviceTypeName(t) == name) {
      *type = t;
      return true;
    }
  }
  return false;
}

std::string Device::ToString() const { return absl::StrCat(DeviceTypeName(type), ":", index); }

}  // namespace gpualloc
