// Backend: the one interface between the allocators and a GPU runtime.
//
// Implementations: CudaBackend (cuda/), HipBackend (hip/), SimBackend (sim/,
// a simulated GPU for machines without one) and FailpointBackend
// (failpoints/, wraps any backend and injects faults).
//
// Contract shared by every method:
//  - Failures are returned as absl::Status carrying the runtime's own error
//    name and message (e.g. "cudaErrorMemoryAllocation: out of memory"). No
//    method of a shipped backend throws; a user-provided backend may, and the
//    allocators catch that at their boundary (common/exception_boundary.h).
//  - Device arguments are explicit. Methods that act on a device make it
//    current for the duration of the call and restore the caller's device, so
//    no call changes the calling thread's current device except SetDevice.
//  - Thread safety: every method may be called concurrently from any thread.
//  - Bad arguments (zero size where a size is required, null, a pointer the
//    backend did not return, a freed pointer, the wrong device, a copy whose
//    direction does not match its pointers) return InvalidArgument or
//    NotFound and change nothing, where the runtime lets us tell.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_BACKEND_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "allocator/backend/types.h"

namespace gpualloc {

class Backend {
 public:
  virtual ~Backend() = default;

  // "sim", "cuda", "hip", or a wrapper's name.
  virtual absl::string_view name() const = 0;

  // --- devices -------------------------------------------------------------
  // Number of devices. With no device or no driver: FailedPrecondition whose
  // message starts "no <runtime> device" and carries the runtime's reason.
  virtual absl::StatusOr<int> DeviceCount() = 0;
  virtual absl::StatusOr<DeviceProperties> GetDeviceProperties(DeviceIndex device) = 0;
  // Free and total bytes as the device reports them right now.
  virtual absl::StatusOr<MemoryInfo> GetMemoryInfo(DeviceIndex device) = 0;
  // The calling thread's current device (cudaSetDevice semantics: per thread).
  virtual absl::Status SetDevice(DeviceIndex device) = 0;
  virtual absl::StatusOr<DeviceIndex> GetDevice() = 0;
  // Waits for all work on `device`.
  virtual absl::Status DeviceSynchronize(DeviceIndex device) = 0;

  // --- device memory ---------------------------------------------------------
  // `bytes` > 0. The result is aligned to DeviceProperties::alignment.
  virtual absl::StatusOr<void*> Malloc(DeviceIndex device, std::size_t bytes) = 0;
  // Frees memory from Malloc or MallocManaged on `device`. Like cudaFree it
  // waits for outstanding work on the device first.
  virtual absl::Status Free(DeviceIndex device, void* ptr) = 0;

  // Stream-ordered allocation (cudaMallocAsync). The memory may be used by
  // work on `stream` enqueued after the call; after FreeAsync it is returned
  // only when the stream reaches the free. Unimplemented where unsupported.
  virtual absl::StatusOr<void*> MallocAsync(std::size_t bytes, Stream stream) = 0;
  virtual absl::Status FreeAsync(void* ptr, Stream stream) = 0;

  // Page-locked host memory associated with `device` (its owner).
  virtual absl::StatusOr<void*> HostAlloc(DeviceIndex device, std::size_t bytes) = 0;
  virtual absl::Status HostFree(DeviceIndex device, void* ptr) = 0;

  // Managed (unified) memory, accessible from host and device; freed by Free.
  virtual absl::StatusOr<void*> MallocManaged(DeviceIndex device, std::size_t bytes) = 0;
  // Migrates [ptr, ptr+bytes) of managed memory to `destination` (a device or
  // kHostDevice) in stream order.
  virtual absl::Status Prefetch(const void* ptr, std::size_t bytes, DeviceIndex destination,
                                Stream stream) = 0;

  // --- streams and events ------------------------------------------------------
  virtual absl::StatusOr<Stream> CreateStream(DeviceIndex device) = 0;
  // A non-blocking stream of `priority`, between the device's
  // stream_priority_least and stream_priority_greatest (DeviceProperties);
  // a priority outside them is clamped to the nearer one, as CUDA and HIP
  // do. A backend without priorities accepts only its default priority.
  virtual absl::StatusOr<Stream> CreateStreamWithPriority(DeviceIndex device, int priority) {
    if (priority != 0) {
      return absl::UnimplementedError("this backend has no stream priorities");
    }
    return CreateStream(device);
  }
  // The priority `stream` was created with (the default stream's: 0).
  virtual absl::StatusOr<int> GetStreamPriority(Stream stream) {
    (void)stream;
    return 0;
  }
  // Waits for the stream's work, then destroys it. The default stream cannot
  // be destroyed.
  virtual absl::Status DestroyStream(Stream stream) = 0;
  virtual absl::Status SynchronizeStream(Stream stream) = 0;
  // Later work on `stream` waits until `event` completes.
  virtual absl::Status StreamWaitEvent(Stream stream, Event event) = 0;

  virtual absl::StatusOr<Event> CreateEvent(DeviceIndex device) = 0;
  // Captures the work enqueued on `stream` so far.
  virtual absl::Status RecordEvent(Event event, Stream stream) = 0;
  // true when the captured work is complete (or the event was never recorded).
  virtual absl::StatusOr<bool> QueryEvent(Event event) = 0;
  virtual absl::Status SynchronizeEvent(Event event) = 0;
  virtual absl::Status DestroyEvent(Event event) = 0;

  // --- copies ----------------------------------------------------------------
  // `kind` must match where dst and src live; a mismatch is InvalidArgument
  // where the runtime can tell. The synchronous forms return after the copy.
  virtual absl::Status Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) = 0;
  virtual absl::Status MemcpyAsync(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                                   Stream stream) = 0;
  virtual absl::Status Memset(void* dst, int value, std::size_t bytes) = 0;
  virtual absl::Status MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) = 0;

  // --- peer access between devices -------------------------------------------
  // Whether work on `device` can reach memory of `peer` once peer access is
  // enabled (cudaDeviceCanAccessPeer). A backend without peers: false.
  virtual absl::StatusOr<bool> CanAccessPeer(DeviceIndex device, DeviceIndex peer) {
    (void)device;
    (void)peer;
    return false;
  }
  // Lets kernels on `device` use memory of `peer` (cudaDeviceEnablePeerAccess
  // made on `device`). OK if it already is; FailedPrecondition where there
  // is no link; InvalidArgument for device == peer.
  virtual absl::Status EnablePeerAccess(DeviceIndex device, DeviceIndex peer) {
    (void)device;
    (void)peer;
    return absl::UnimplementedError("this backend has no peer access");
  }
  // Copies `bytes` from `src` (memory of `src_device`) to `dst` (memory of
  // `dst_device`) in the order of `stream` (cudaMemcpyPeerAsync; staged
  // through the host by the runtime where the devices have no link).
  virtual absl::Status MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                                       DeviceIndex src_device, std::size_t bytes, Stream stream) {
    (void)dst;
    (void)dst_device;
    (void)src;
    (void)src_device;
    (void)bytes;
    (void)stream;
    return absl::UnimplementedError("this backend has no peer copies");
  }

  // --- virtual memory (Unimplemented where the runtime lacks it) -------------
  // Sizes must be multiples of DeviceProperties::vm_granularity.
  virtual absl::StatusOr<std::uintptr_t> VmReserve(DeviceIndex device, std::size_t bytes) = 0;
  virtual absl::Status VmRelease(std::uintptr_t address, std::size_t bytes) = 0;
  virtual absl::StatusOr<PhysicalChunk> VmCreate(DeviceIndex device, std::size_t bytes) = 0;
  virtual absl::Status VmReleasePhysical(PhysicalChunk chunk) = 0;
  // Maps `chunk` at `address`; the range is inaccessible until VmSetAccess.
  virtual absl::Status VmMap(std::uintptr_t address, PhysicalChunk chunk) = 0;
  virtual absl::Status VmSetAccess(std::uintptr_t address, std::size_t bytes,
                                   DeviceIndex device) = 0;
  virtual absl::Status VmUnmap(std::uintptr_t address, std::size_t bytes) = 0;

  // --- host functions ---------------------------------------------------------
  // Enqueues `fn(data)` on `stream`: it runs on a runtime thread once the
  // stream's earlier work is done, and the stream's later work waits for it
  // to return (cudaLaunchHostFunc). `fn` must not call the runtime. Tests use
  // it to hold a real stream's work back deterministically; Unimplemented
  // where the backend has no such call (the default).
  virtual absl::Status LaunchHostFunc(Stream stream, void (*fn)(void*), void* data) {
    (void)stream;
    (void)fn;
    (void)data;
    return absl::UnimplementedError(absl::StrCat(name(), ": no host functions on streams"));
  }

  // --- stream-order checking --------------------------------------------------
  // The host is about to read or write [ptr, ptr+bytes) of pinned or managed
  // memory directly. A runtime needs no such call (the default does nothing);
  // the sim's stream-order checker records it, so a host write racing device
  // work still queued on that memory is reported. Our buffer types call it.
  virtual absl::Status NoteHostAccess(const void* ptr, std::size_t bytes, AccessMode mode) {
    (void)ptr;
    (void)bytes;
    (void)mode;
    return absl::OkStatus();
  }
};

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_BACKEND_H_
