#include "allocator/backend/types.h"

#include <array>

namespace gpualloc {
namespace {

constexpr std::array<absl::string_view, kBackendOpCount> kOpNames = {
    "device_count",  "device_properties", "memory_info",    "set_device",
    "get_device",    "malloc",            "free",           "malloc_async",
    "free_async",    "host_alloc",        "host_free",      "malloc_managed",
    "prefetch",      "stream_create",     "stream_destroy", "stream_synchronize",
    "stream_wait_event", "event_create",  "event_record",   "event_query",
    "event_synchronize", "event_destroy", "memcpy",         "memcpy_async",
    "memset",        "memset_async",      "device_synchronize", "vm_reserve",
    "vm_release",    "vm_create",         "vm_release_physical", "vm_map",
    "vm_set_access", "vm_unmap",         "enable_peer_access", "memcpy_peer_async",
    "host_access",
};

}  // namespace

absl::string_view CopyKindName(CopyKind kind) {
  switch (kind) {
    case CopyKind::kHostToDevice: return "host-to-device";
    case CopyKind::kDeviceToHost: return "device-to-host";
    case CopyKind::kDeviceToDevice: return "device-to-device";
  }
  return "unknown-copy-kind";
}

absl::string_view BackendOpName(BackendOp op) {
  const int i = static_cast<int>(op);
  return (i >= 0 && i < kBackendOpCount) ? kOpNames[i] : "unknown_op";
}

bool ParseBackendOp(absl::string_view name, BackendOp* op) {
  for (int i = 0; i < kBackendOpCount; ++i) {
    if (kOpNames[i] == name) {
      *op = static_cast<BackendOp>(i);
      return true;
    }
  }
  return false;
}

}  // namespace gpualloc
