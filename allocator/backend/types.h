// Value types shared by every backend: streams, events, copy directions and
// the names of backend operations (used by accounting and fault injection).
#ifndef GPUALLOC_ALLOCATOR_BACKEND_TYPES_H_
#define GPUALLOC_ALLOCATOR_BACKEND_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace gpualloc {

// A device index within one backend. kHostDevice names the host where an API
// accepts either (prefetch destinations).
using DeviceIndex = int;
inline constexpr DeviceIndex kHostDevice = -1;

// A stream: an opaque runtime handle plus the device it belongs to. A zero
// handle is the device's default stream. Cheap to copy, compared by value.
struct Stream {
  std::uintptr_t handle = 0;
  DeviceIndex device = 0;

  static Stream Default(DeviceIndex device) { return Stream{0, device}; }
  bool is_default() const { return handle == 0; }
  friend bool operator==(const Stream&, const Stream&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Stream& s) {
    return H::combine(std::move(h), s.handle, s.device);
  }
};

// An event: an opaque runtime handle plus the device it was created on.
struct Event {
  std::uintptr_t handle = 0;
  DeviceIndex device = 0;
  friend bool operator==(const Event&, const Event&) = default;
};

// A physical memory chunk for the virtual-memory API (cuMemCreate-like).
struct PhysicalChunk {
  std::uintptr_t handle = 0;
  std::size_t bytes = 0;
  DeviceIndex device = 0;
};

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

// How an operation touches memory (stream-order checking).
enum class AccessMode { kRead, kWrite };
absl::string_view CopyKindName(CopyKind kind);

struct DeviceProperties {
  std::string name;
  std::size_t total_bytes = 0;
  // Every pointer Malloc returns is a multiple of this (256 on CUDA and HIP).
  std::size_t alignment = 256;
  bool supports_stream_ordered_alloc = false;
  bool supports_managed_memory = false;
  bool supports_virtual_memory = false;
  // Granularity of VmReserve/VmCreate sizes; 0 when VMM is unsupported.
  std::size_t vm_granularity = 0;
  // Stream priorities: lower numbers are higher priorities (the CUDA and HIP
  // convention). `least` is the default; equal bounds: no priorities.
  int stream_priority_least = 0;
  int stream_priority_greatest = 0;
  // How host and device see each other's memory (what a transfer strategy
  // is chosen from): the device uses managed memory while the host does
  // (cudaDevAttrConcurrentManagedAccess), reaches pageable host memory
  // directly (PageableMemoryAccess), and the link supports native atomics
  // (HostNativeAtomicSupported).
  bool concurrent_managed_access = false;
  bool pageable_memory_access = false;
  bool host_native_atomics = false;
};

struct MemoryInfo {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};

// Every backend call, by name. Fault injection targets these; the sim counts
// them. Keep kCount last.
enum class BackendOp : int {
  kDeviceCount,
  kDeviceProperties,
  kMemoryInfo,
  kSetDevice,
  kGetDevice,
  kMalloc,
  kFree,
  kMallocAsync,
  kFreeAsync,
  kHostAlloc,
  kHostFree,
  kMallocManaged,
  kPrefetch,
  kStreamCreate,
  kStreamDestroy,
  kStreamSynchronize,
  kStreamWaitEvent,
  kEventCreate,
  kEventRecord,
  kEventQuery,
  kEventSynchronize,
  kEventDestroy,
  kMemcpy,
  kMemcpyAsync,
  kMemset,
  kMemsetAsync,
  kDeviceSynchronize,
  kVmReserve,
  kVmRelease,
  kVmCreate,
  kVmReleasePhysical,
  kVmMap,
  kVmSetAccess,
  kVmUnmap,
  kEnablePeerAccess,
  kMemcpyPeerAsync,
  // Not a runtime call: the host reading or writing pinned or managed memory,
  // as told to the backend's checker (Backend::NoteHostAccess).
  kHostAccess,
  kCount,
};
inline constexpr int kBackendOpCount = static_cast<int>(BackendOp::kCount);

// "malloc", "free_async", ... ; stable names used in flags and reports.
absl::string_view BackendOpName(BackendOp op);
// Inverse of BackendOpName; false if `name` names no operation.
bool ParseBackendOp(absl::string_view name, BackendOp* op);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_TYPES_H_
