#include "allocator/backend/hip/hip_backend.h"

#include "allocator/backend/unavailable_backend.h"

#ifdef GPUALLOC_HAVE_HIP
#include <hip/hip_runtime_api.h>

#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/backend/hip/hip_runtime_loader.h"
#include "allocator/common/status_macros.h"
#endif

namespace gpualloc {

#ifndef GPUALLOC_HAVE_HIP

bool HipBackendCompiledIn() { return false; }

std::unique_ptr<Backend> MakeHipBackend() {
  return std::make_unique<UnavailableBackend>(
      "hip", "no HIP device: this binary was built without the HIP runtime");
}

#else

bool HipBackendCompiledIn() { return true; }

namespace {

// The loaded runtime. Only reached from a HipBackend, which MakeHipBackend
// creates after the runtime loaded.
const HipRuntime& Hip() { return **LoadHipRuntime(); }

absl::StatusCode CodeFor(hipError_t e) {
  switch (e) {
    case hipErrorOutOfMemory:
      return absl::StatusCode::kResourceExhausted;
    case hipErrorInvalidValue:
    case hipErrorInvalidDevice:
    case hipErrorInvalidDevicePointer:
    case hipErrorInvalidMemcpyDirection:
    case hipErrorInvalidResourceHandle:
      return absl::StatusCode::kInvalidArgument;
    case hipErrorNoDevice:
    case hipErrorInsufficientDriver:
      return absl::StatusCode::kFailedPrecondition;
    case hipErrorNotSupported:
      return absl::StatusCode::kUnimplemented;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status Check(hipError_t e, absl::string_view op) {
  if (e == hipSuccess) return absl::OkStatus();
  (void)Hip().hipGetLastError();
  std::string prefix(op);
  if (e == hipErrorNoDevice || e == hipErrorInsufficientDriver) prefix = "no HIP device";
  return absl::Status(CodeFor(e), absl::StrCat(prefix, ": ", Hip().hipGetErrorName(e), ": ",
                                               Hip().hipGetErrorString(e)));
}

hipStream_t Raw(Stream s) { return reinterpret_cast<hipStream_t>(s.handle); }
hipEvent_t Raw(Event e) { return reinterpret_cast<hipEvent_t>(e.handle); }

hipMemcpyKind Raw(CopyKind k) {
  switch (k) {
    case CopyKind::kHostToDevice: return hipMemcpyHostToDevice;
    case CopyKind::kDeviceToHost: return hipMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice: return hipMemcpyDeviceToDevice;
  }
  return hipMemcpyDefault;
}

// Makes `device` current for a scope and restores the caller's device.
class ScopedHipDevice {
 public:
  // A negative `device` (no owner) leaves the current device as it is.
  explicit ScopedHipDevice(DeviceIndex device) {
    if (device < 0) return;
    status_ = Check(Hip().hipGetDevice(&previous_), "hipGetDevice");
    if (status_.ok() && previous_ != device) {
      status_ = Check(Hip().hipSetDevice(device), "hipSetDevice");
      switched_ = status_.ok();
    }
  }
  ~ScopedHipDevice() {
    if (switched_) (void)Hip().hipSetDevice(previous_);
  }
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  absl::Status status_;
};

#define GPUALLOC_ON_DEVICE(device)     \
  ScopedHipDevice on_device_(device);  \
  GPUALLOC_RETURN_IF_ERROR(on_device_.status())

// Where a pointer lives: its attributes, or none for memory the runtime does
// not know (unregistered host memory makes hipPointerGetAttributes fail).
std::optional<hipPointerAttribute_t> PlaceOf(const void* p) {
  hipPointerAttribute_t attrs = {};
  const bool known = Hip().hipPointerGetAttributes(&attrs, p) == hipSuccess;
  (void)Hip().hipGetLastError();
  return known ? std::optional<hipPointerAttribute_t>(attrs) : std::nullopt;
}

bool OnDevice(const std::optional<hipPointerAttribute_t>& place) {
  return place && (place->memoryType == hipMemoryTypeDevice || place->isManaged);
}

// The device that owns device memory at this place, or -1 (host or managed
// memory): a synchronous copy or memset runs there, whichever device is
// current.
int OwnerOf(const std::optional<hipPointerAttribute_t>& place) {
  return place && place->memoryType == hipMemoryTypeDevice ? place->device : -1;
}

// Checks that the pointers are where `kind` says, and returns the device the
// copy runs on: the owner of its device side (the destination of a
// host-to-device copy, else the source), or -1.
absl::StatusOr<int> CheckDirection(void* dst, const void* src, CopyKind kind) {
  const std::optional<hipPointerAttribute_t> d = PlaceOf(dst), s = PlaceOf(src);
  const bool d_dev = OnDevice(d);
  const bool s_dev = OnDevice(s);
  const bool ok = (kind == CopyKind::kHostToDevice && d_dev) ||
                  (kind == CopyKind::kDeviceToHost && s_dev) ||
                  (kind == CopyKind::kDeviceToDevice && d_dev && s_dev);
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("hipErrorInvalidMemcpyDirection: ", CopyKindName(kind),
                     " copy whose pointers are not where the direction says"));
  }
  return OwnerOf(kind == CopyKind::kHostToDevice ? d : s);
}

absl::Status NoVmm() {
  return absl::UnimplementedError(
      "hipErrorNotSupported: HIP 5.2 has no virtual-memory API (hipMemAddressReserve)");
}

class HipBackend final : public Backend {
 public:
  absl::string_view name() const override { return "hip"; }

  absl::StatusOr<int> DeviceCount() override {
    int n = 0;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipGetDeviceCount(&n), "hipGetDeviceCount"));
    if (n == 0) return absl::FailedPreconditionError("no HIP device: the runtime found none");
    return n;
  }

  absl::StatusOr<DeviceProperties> GetDeviceProperties(DeviceIndex device) override {
    hipDeviceProp_t prop = {};
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipGetDeviceProperties(&prop, device), "hipGetDeviceProperties"));
    DeviceProperties p;
    p.name = prop.name;
    p.total_bytes = prop.totalGlobalMem;
    p.alignment = 256;
    int pools = 0, managed = 0;
    (void)Hip().hipDeviceGetAttribute(&pools, hipDeviceAttributeMemoryPoolsSupported, device);
    (void)Hip().hipDeviceGetAttribute(&managed, hipDeviceAttributeManagedMemory, device);
    p.supports_stream_ordered_alloc = pools != 0;
    p.supports_managed_memory = managed != 0;
    int concurrent = 0, pageable = 0, atomics = 0;
    (void)Hip().hipDeviceGetAttribute(&concurrent, hipDeviceAttributeConcurrentManagedAccess, device);
    (void)Hip().hipDeviceGetAttribute(&pageable, hipDeviceAttributePageableMemoryAccess, device);
    (void)Hip().hipDeviceGetAttribute(&atomics, hipDeviceAttributeHostNativeAtomicSupported, device);
    p.concurrent_managed_access = concurrent != 0;
    p.pageable_memory_access = pageable != 0;
    p.host_native_atomics = atomics != 0;
    {
      GPUALLOC_ON_DEVICE(device);  // the range is the current device's
      GPUALLOC_RETURN_IF_ERROR(Check(
          Hip().hipDeviceGetStreamPriorityRange(&p.stream_priority_least, &p.stream_priority_greatest),
          "hipDeviceGetStreamPriorityRange"));
    }
    return p;
  }

  absl::StatusOr<MemoryInfo> GetMemoryInfo(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    MemoryInfo info;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipMemGetInfo(&info.free_bytes, &info.total_bytes), "hipMemGetInfo"));
    return info;
  }

  absl::Status SetDevice(DeviceIndex device) override {
    return Check(Hip().hipSetDevice(device), "hipSetDevice");
  }

  absl::StatusOr<DeviceIndex> GetDevice() override {
    int d = 0;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipGetDevice(&d), "hipGetDevice"));
    return d;
  }

  absl::Status DeviceSynchronize(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(Hip().hipDeviceSynchronize(), "hipDeviceSynchronize");
  }

  absl::StatusOr<void*> Malloc(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("hipMalloc: zero-byte allocation requested");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipMalloc(&p, bytes), absl::StrFormat("hipMalloc(%d)", bytes)));
    return p;
  }

  absl::Status Free(DeviceIndex device, void* ptr) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(Hip().hipFree(ptr), "hipFree");
  }

  absl::StatusOr<void*> MallocAsync(std::size_t bytes, Stream stream) override {
    if (bytes == 0) return absl::InvalidArgumentError("hipMallocAsync: zero-byte allocation");
    GPUALLOC_ON_DEVICE(stream.device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipMallocAsync(&p, bytes, Raw(stream)), "hipMallocAsync"));
    return p;
  }

  absl::Status FreeAsync(void* ptr, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipFreeAsync(ptr, Raw(stream)), "hipFreeAsync");
  }

  absl::StatusOr<void*> HostAlloc(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("hipHostMalloc: zero-byte allocation");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipHostMalloc(&p, bytes, hipHostMallocPortable), "hipHostMalloc"));
    return p;
  }

  absl::Status HostFree(DeviceIndex device, void* ptr) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(Hip().hipHostFree(ptr), "hipHostFree");
  }

  absl::StatusOr<void*> MallocManaged(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("hipMallocManaged: zero-byte allocation");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipMallocManaged(&p, bytes, hipMemAttachGlobal), "hipMallocManaged"));
    return p;
  }

  absl::Status Prefetch(const void* ptr, std::size_t bytes, DeviceIndex destination,
                        Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipMemPrefetchAsync(ptr, bytes, destination == kHostDevice ? hipCpuDeviceId : destination,
                                     Raw(stream)),
                 "hipMemPrefetchAsync");
  }

  absl::StatusOr<Stream> CreateStream(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    hipStream_t s = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipStreamCreateWithFlags(&s, hipStreamNonBlocking), "hipStreamCreate"));
    return Stream{reinterpret_cast<std::uintptr_t>(s), device};
  }

  absl::StatusOr<Stream> CreateStreamWithPriority(DeviceIndex device, int priority) override {
    GPUALLOC_ON_DEVICE(device);
    hipStream_t s = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(
        Hip().hipStreamCreateWithPriority(&s, hipStreamNonBlocking, priority),
        "hipStreamCreateWithPriority"));
    return Stream{reinterpret_cast<std::uintptr_t>(s), device};
  }

  absl::StatusOr<bool> CanAccessPeer(DeviceIndex device, DeviceIndex peer) override {
    int can = 0;
    GPUALLOC_RETURN_IF_ERROR(
        Check(Hip().hipDeviceCanAccessPeer(&can, device, peer), "hipDeviceCanAccessPeer"));
    return can != 0;
  }

  absl::Status EnablePeerAccess(DeviceIndex device, DeviceIndex peer) override {
    if (device == peer) {
      return absl::InvalidArgumentError("hipDeviceEnablePeerAccess: a device is not its own peer");
    }
    GPUALLOC_ON_DEVICE(device);
    const hipError_t e = Hip().hipDeviceEnablePeerAccess(peer, 0);
    if (e == hipErrorPeerAccessAlreadyEnabled) {
      (void)Hip().hipGetLastError();  // not an error to us: clear it
      return absl::OkStatus();
    }
    if (e == hipErrorPeerAccessUnsupported) {
      (void)Hip().hipGetLastError();
      return absl::FailedPreconditionError(absl::StrFormat(
          "hipDeviceEnablePeerAccess: device %d cannot reach device %d", device, peer));
    }
    return Check(e, "hipDeviceEnablePeerAccess");
  }

  absl::Status MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                               DeviceIndex src_device, std::size_t bytes, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(
        Hip().hipMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, Raw(stream)),
        "hipMemcpyPeerAsync");
  }

  absl::StatusOr<int> GetStreamPriority(Stream stream) override {
    int priority = 0;
    GPUALLOC_RETURN_IF_ERROR(
        Check(Hip().hipStreamGetPriority(Raw(stream), &priority), "hipStreamGetPriority"));
    return priority;
  }

  absl::Status DestroyStream(Stream stream) override {
    if (stream.is_default()) {
      return absl::InvalidArgumentError("hipStreamDestroy: the default stream cannot be destroyed");
    }
    GPUALLOC_ON_DEVICE(stream.device);
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipStreamSynchronize(Raw(stream)), "hipStreamSynchronize"));
    return Check(Hip().hipStreamDestroy(Raw(stream)), "hipStreamDestroy");
  }

  absl::Status SynchronizeStream(Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipStreamSynchronize(Raw(stream)), "hipStreamSynchronize");
  }

  absl::Status StreamWaitEvent(Stream stream, Event event) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipStreamWaitEvent(Raw(stream), Raw(event), 0), "hipStreamWaitEvent");
  }

  absl::StatusOr<Event> CreateEvent(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    hipEvent_t e = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(Hip().hipEventCreateWithFlags(&e, hipEventDisableTiming), "hipEventCreate"));
    return Event{reinterpret_cast<std::uintptr_t>(e), device};
  }

  absl::Status RecordEvent(Event event, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipEventRecord(Raw(event), Raw(stream)), "hipEventRecord");
  }

  absl::StatusOr<bool> QueryEvent(Event event) override {
    const hipError_t e = Hip().hipEventQuery(Raw(event));
    if (e == hipErrorNotReady) {
      (void)Hip().hipGetLastError();
      return false;
    }
    GPUALLOC_RETURN_IF_ERROR(Check(e, "hipEventQuery"));
    return true;
  }

  absl::Status SynchronizeEvent(Event event) override {
    return Check(Hip().hipEventSynchronize(Raw(event)), "hipEventSynchronize");
  }

  absl::Status DestroyEvent(Event event) override {
    return Check(Hip().hipEventDestroy(Raw(event)), "hipEventDestroy");
  }

  absl::Status Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) override {
    if (bytes == 0) return absl::OkStatus();
    GPUALLOC_ASSIGN_OR_RETURN(int owner, CheckDirection(dst, src, kind));
    GPUALLOC_ON_DEVICE(owner);
    return Check(Hip().hipMemcpy(dst, src, bytes, Raw(kind)), "hipMemcpy");
  }

  absl::Status MemcpyAsync(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                           Stream stream) override {
    if (bytes == 0) return absl::OkStatus();
    GPUALLOC_RETURN_IF_ERROR(CheckDirection(dst, src, kind).status());
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipMemcpyAsync(dst, src, bytes, Raw(kind), Raw(stream)), "hipMemcpyAsync");
  }

  absl::Status Memset(void* dst, int value, std::size_t bytes) override {
    GPUALLOC_ON_DEVICE(OwnerOf(PlaceOf(dst)));
    return Check(Hip().hipMemset(dst, value, bytes), "hipMemset");
  }

  absl::Status MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipMemsetAsync(dst, value, bytes, Raw(stream)), "hipMemsetAsync");
  }

  absl::Status LaunchHostFunc(Stream stream, void (*fn)(void*), void* data) override {
    if (Hip().hipLaunchHostFunc == nullptr) {
      return absl::UnimplementedError("hipLaunchHostFunc: this HIP runtime does not export it");
    }
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(Hip().hipLaunchHostFunc(Raw(stream), fn, data), "hipLaunchHostFunc");
  }

  absl::StatusOr<std::uintptr_t> VmReserve(DeviceIndex, std::size_t) override { return NoVmm(); }
  absl::Status VmRelease(std::uintptr_t, std::size_t) override { return NoVmm(); }
  absl::StatusOr<PhysicalChunk> VmCreate(DeviceIndex, std::size_t) override { return NoVmm(); }
  absl::Status VmReleasePhysical(PhysicalChunk) override { return NoVmm(); }
  absl::Status VmMap(std::uintptr_t, PhysicalChunk) override { return NoVmm(); }
  absl::Status VmSetAccess(std::uintptr_t, std::size_t, DeviceIndex) override { return NoVmm(); }
  absl::Status VmUnmap(std::uintptr_t, std::size_t) override { return NoVmm(); }
};

#undef GPUALLOC_ON_DEVICE

}  // namespace

std::unique_ptr<Backend> MakeHipBackend() {
  absl::StatusOr<const HipRuntime*> runtime = LoadHipRuntime();
  if (!runtime.ok()) {
    return std::make_unique<UnavailableBackend>("hip", std::string(runtime.status().message()));
  }
  return std::make_unique<HipBackend>();
}

#endif  // GPUALLOC_HAVE_HIP

}  // namespace gpualloc
