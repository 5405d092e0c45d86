#include "allocator/backend/cuda/cuda_backend.h"

#include "allocator/backend/unavailable_backend.h"

#ifdef GPUALLOC_HAVE_CUDA
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "allocator/common/status_macros.h"
#endif

namespace gpualloc {

#ifndef GPUALLOC_HAVE_CUDA

bool CudaBackendCompiledIn() { return false; }

std::unique_ptr<Backend> MakeCudaBackend() {
  return std::make_unique<UnavailableBackend>(
      "cuda", "no CUDA device: this binary was built without the CUDA toolkit");
}

absl::Status SetCudaDefaultPoolReleaseThreshold(DeviceIndex, std::uint64_t) {
  return absl::FailedPreconditionError("no CUDA device: this binary was built without the CUDA toolkit");
}

#else

bool CudaBackendCompiledIn() { return true; }

namespace {

absl::StatusCode CodeFor(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return absl::StatusCode::kResourceExhausted;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorInvalidResourceHandle:
      return absl::StatusCode::kInvalidArgument;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::StatusCode::kFailedPrecondition;
    case cudaErrorNotSupported:
      return absl::StatusCode::kUnimplemented;
    default:
      return absl::StatusCode::kInternal;
  }
}

// The runtime's own error name and string, prefixed by the operation.
absl::Status Check(cudaError_t e, absl::string_view op) {
  if (e == cudaSuccess) return absl::OkStatus();
  (void)cudaGetLastError();  // clear the non-sticky error so later calls start clean
  std::string prefix(op);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) prefix = "no CUDA device";
  return absl::Status(CodeFor(e), absl::StrCat(prefix, ": ", cudaGetErrorName(e), ": ",
                                               cudaGetErrorString(e)));
}

cudaStream_t Raw(Stream s) { return reinterpret_cast<cudaStream_t>(s.handle); }
cudaEvent_t Raw(Event e) { return reinterpret_cast<cudaEvent_t>(e.handle); }

cudaMemcpyKind Raw(CopyKind k) {
  switch (k) {
    case CopyKind::kHostToDevice: return cudaMemcpyHostToDevice;
    case CopyKind::kDeviceToHost: return cudaMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice: return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}

// Driver-API virtual-memory entry points, resolved once.
struct DriverVmm {
  CUresult (*get_error_name)(CUresult, const char**) = nullptr;
  CUresult (*device_get)(CUdevice*, int) = nullptr;
  CUresult (*device_get_attribute)(int*, CUdevice_attribute, CUdevice) = nullptr;
  CUresult (*address_reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) =
      nullptr;
  CUresult (*address_free)(CUdeviceptr, size_t) = nullptr;
  CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                     unsigned long long) = nullptr;
  CUresult (*release)(CUmemGenericAllocationHandle) = nullptr;
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                  unsigned long long) = nullptr;
  CUresult (*unmap)(CUdeviceptr, size_t) = nullptr;
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
  CUresult (*granularity)(size_t*, const CUmemAllocationProp*,
                          CUmemAllocationGranularity_flags) = nullptr;
  absl::Status status;
};

template <typename Fn>
absl::Status Resolve(const char* symbol, Fn* fn) {
  void* raw = nullptr;
  cudaDriverEntryPointQueryResult result = cudaDriverEntryPointSymbolNotFound;
  GPUALLOC_RETURN_IF_ERROR(Check(
      cudaGetDriverEntryPointByVersion(symbol, &raw, 12000, cudaEnableDefault, &result),
      absl::StrCat("cudaGetDriverEntryPointByVersion(", symbol, ")")));
  if (result != cudaDriverEntryPointSuccess || raw == nullptr) {
    return absl::UnimplementedError(absl::StrCat("CUDA driver has no entry point ", symbol));
  }
  *fn = reinterpret_cast<Fn>(raw);
  return absl::OkStatus();
}

const DriverVmm& Vmm() {
  static const DriverVmm* vmm = [] {
    auto* d = new DriverVmm;  // resolved once for the process; never freed
    d->status = [&]() -> absl::Status {
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuGetErrorName", &d->get_error_name));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuDeviceGet", &d->device_get));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuDeviceGetAttribute", &d->device_get_attribute));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemAddressReserve", &d->address_reserve));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemAddressFree", &d->address_free));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemCreate", &d->create));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemRelease", &d->release));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemMap", &d->map));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemUnmap", &d->unmap));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemSetAccess", &d->set_access));
      GPUALLOC_RETURN_IF_ERROR(Resolve("cuMemGetAllocationGranularity", &d->granularity));
      return absl::OkStatus();
    }();
    return d;
  }();
  return *vmm;
}

absl::Status CheckDriver(CUresult r, absl::string_view op) {
  if (r == CUDA_SUCCESS) return absl::OkStatus();
  const char* name = "CUDA_ERROR_UNKNOWN";
  if (Vmm().get_error_name) Vmm().get_error_name(r, &name);
  const absl::StatusCode code = r == CUDA_ERROR_OUT_OF_MEMORY   ? absl::StatusCode::kResourceExhausted
                                : r == CUDA_ERROR_INVALID_VALUE ? absl::StatusCode::kInvalidArgument
                                : r == CUDA_ERROR_NOT_SUPPORTED ? absl::StatusCode::kUnimplemented
                                                                : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(op, ": ", name));
}

CUmemAllocationProp PinnedDeviceProp(DeviceIndex device) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

// The two driver calls that let a scope restore the caller's device without
// creating a context there, resolved once; null where the driver lacks them.
struct DriverContext {
  CUresult (*device_get)(CUdevice*, int) = nullptr;
  CUresult (*primary_ctx_get_state)(CUdevice, unsigned int*, int*) = nullptr;
  CUresult (*ctx_set_current)(CUcontext) = nullptr;
  CUresult (*ctx_get_current)(CUcontext*) = nullptr;
};

const DriverContext& Context() {
  static const DriverContext* ctx = [] {
    auto* c = new DriverContext;  // resolved once for the process; never freed
    if (!Resolve("cuDeviceGet", &c->device_get).ok() ||
        !Resolve("cuDevicePrimaryCtxGetState", &c->primary_ctx_get_state).ok() ||
        !Resolve("cuCtxSetCurrent", &c->ctx_set_current).ok() ||
        !Resolve("cuCtxGetCurrent", &c->ctx_get_current).ok()) {
      *c = DriverContext{};
    }
    return c;
  }();
  return *ctx;
}

// Whether `device`'s primary context exists (a runtime call there would not
// create one). True when the driver cannot say: then restoring is the old way.
bool HasPrimaryContext(DeviceIndex device) {
  const DriverContext& c = Context();
  if (c.primary_ctx_get_state == nullptr) return true;
  CUdevice handle = 0;
  if (c.device_get(&handle, device) != CUDA_SUCCESS) return true;
  unsigned int flags = 0;
  int active = 0;
  return c.primary_ctx_get_state(handle, &flags, &active) != CUDA_SUCCESS || active != 0;
}

// Makes `device` current for a scope and gives the caller back the device it
// had, so no backend call leaks a device switch into the calling thread.
// Switches only when the device differs. On the way back it never creates a
// context on a device the thread had not used (PyTorch's MaybeExchangeDevice
// rule): a thread that had no context yet gets none again (cuCtxSetCurrent
// to null), which the runtime reports as device 0, as before the scope.
class ScopedCudaDevice {
 public:
  // A negative `device` (no owner) leaves the current device as it is.
  explicit ScopedCudaDevice(DeviceIndex device) {
    if (device < 0) return;
    status_ = Check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (status_.ok() && previous_ != device) {
      previous_had_context_ = HasPrimaryContext(previous_);
      status_ = Check(cudaSetDevice(device), "cudaSetDevice");
      switched_ = status_.ok();
    }
  }
  ~ScopedCudaDevice() {
    if (!switched_) return;
    if (previous_had_context_ || Context().ctx_set_current == nullptr) {
      (void)cudaSetDevice(previous_);
    } else {
      (void)Context().ctx_set_current(nullptr);
    }
  }
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  bool previous_had_context_ = true;
  absl::Status status_;
};

#define GPUALLOC_ON_DEVICE(device)        \
  ScopedCudaDevice on_device_(device);    \
  GPUALLOC_RETURN_IF_ERROR(on_device_.status())

// Driver-API calls act on the thread's current context, and a thread that
// has made no runtime call yet has none (the runtime creates it lazily): a
// virtual-memory call from such a thread (a free from a worker thread that
// shrinks an expandable segment) must first make `device`'s primary context
// current, as the runtime itself would.
absl::Status EnsureCurrentContext(DeviceIndex device) {
  const DriverContext& c = Context();
  if (c.ctx_get_current != nullptr) {
    CUcontext current = nullptr;
    if (c.ctx_get_current(&current) == CUDA_SUCCESS && current != nullptr) return absl::OkStatus();
  }
  return Check(cudaSetDevice(device), "cudaSetDevice");
}

#define GPUALLOC_DRIVER_ON_DEVICE(device) \
  GPUALLOC_ON_DEVICE(device);             \
  GPUALLOC_RETURN_IF_ERROR(EnsureCurrentContext(device))

// Where a pointer lives according to the runtime.
absl::StatusOr<cudaPointerAttributes> PlaceOf(const void* p) {
  cudaPointerAttributes attrs = {};
  GPUALLOC_RETURN_IF_ERROR(Check(cudaPointerGetAttributes(&attrs, p), "cudaPointerGetAttributes"));
  return attrs;
}

// The device that owns device memory with these attributes, or -1 (host or
// managed memory): a synchronous copy or memset runs there, whichever device
// is current.
int OwnerOf(const cudaPointerAttributes& attrs) {
  return attrs.type == cudaMemoryTypeDevice ? attrs.device : -1;
}

// Checks that the pointers are where `kind` says, and returns the device the
// copy runs on: the owner of its device side (the destination of a
// host-to-device copy, else the source), or -1.
absl::StatusOr<int> CheckDirection(void* dst, const void* src, CopyKind kind) {
  GPUALLOC_ASSIGN_OR_RETURN(cudaPointerAttributes dst_place, PlaceOf(dst));
  GPUALLOC_ASSIGN_OR_RETURN(cudaPointerAttributes src_place, PlaceOf(src));
  const cudaMemoryType d = dst_place.type;
  const cudaMemoryType s = src_place.type;
  auto on_device = [](cudaMemoryType t) {
    return t == cudaMemoryTypeDevice || t == cudaMemoryTypeManaged;
  };
  auto on_host = [](cudaMemoryType t) { return t != cudaMemoryTypeDevice; };
  const bool ok = (kind == CopyKind::kHostToDevice && on_device(d) && on_host(s)) ||
                  (kind == CopyKind::kDeviceToHost && on_host(d) && on_device(s)) ||
                  (kind == CopyKind::kDeviceToDevice && on_device(d) && on_device(s));
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("cudaErrorInvalidMemcpyDirection: ", CopyKindName(kind),
                     " copy whose pointers are not where the direction says"));
  }
  return OwnerOf(kind == CopyKind::kHostToDevice ? dst_place : src_place);
}

class CudaBackend final : public Backend {
 public:
  absl::string_view name() const override { return "cuda"; }

  absl::StatusOr<int> DeviceCount() override {
    int n = 0;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaGetDeviceCount(&n), "cudaGetDeviceCount"));
    if (n == 0) return absl::FailedPreconditionError("no CUDA device: the runtime found none");
    return n;
  }

  absl::StatusOr<DeviceProperties> GetDeviceProperties(DeviceIndex device) override {
    cudaDeviceProp prop = {};
    GPUALLOC_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
    DeviceProperties p;
    p.name = prop.name;
    p.total_bytes = prop.totalGlobalMem;
    p.alignment = 256;
    int pools = 0, managed = 0;
    (void)cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device);
    (void)cudaDeviceGetAttribute(&managed, cudaDevAttrManagedMemory, device);
    p.supports_stream_ordered_alloc = pools != 0;
    p.supports_managed_memory = managed != 0;
    int concurrent = 0, pageable = 0, atomics = 0;
    (void)cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device);
    (void)cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, device);
    (void)cudaDeviceGetAttribute(&atomics, cudaDevAttrHostNativeAtomicSupported, device);
    p.concurrent_managed_access = concurrent != 0;
    p.pageable_memory_access = pageable != 0;
    p.host_native_atomics = atomics != 0;
    {
      GPUALLOC_ON_DEVICE(device);  // the range is the current device's
      GPUALLOC_RETURN_IF_ERROR(
          Check(cudaDeviceGetStreamPriorityRange(&p.stream_priority_least,
                                                 &p.stream_priority_greatest),
                "cudaDeviceGetStreamPriorityRange"));
    }
    const DriverVmm& vmm = Vmm();
    CUdevice dev = 0;
    int vm = 0;
    if (vmm.status.ok() && vmm.device_get(&dev, device) == CUDA_SUCCESS &&
        vmm.device_get_attribute(&vm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                 dev) == CUDA_SUCCESS &&
        vm != 0) {
      const CUmemAllocationProp vprop = PinnedDeviceProp(device);
      std::size_t g = 0;
      if (vmm.granularity(&g, &vprop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) == CUDA_SUCCESS) {
        p.supports_virtual_memory = true;
        p.vm_granularity = g;
      }
    }
    return p;
  }

  absl::StatusOr<MemoryInfo> GetMemoryInfo(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    MemoryInfo info;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaMemGetInfo(&info.free_bytes, &info.total_bytes), "cudaMemGetInfo"));
    return info;
  }

  absl::Status SetDevice(DeviceIndex device) override {
    return Check(cudaSetDevice(device), "cudaSetDevice");
  }

  absl::StatusOr<DeviceIndex> GetDevice() override {
    int d = 0;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaGetDevice(&d), "cudaGetDevice"));
    return d;
  }

  absl::Status DeviceSynchronize(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }

  absl::StatusOr<void*> Malloc(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaMalloc: zero-byte allocation requested");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaMalloc(&p, bytes), absl::StrFormat("cudaMalloc(%d)", bytes)));
    return p;
  }

  absl::Status Free(DeviceIndex device, void* ptr) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(cudaFree(ptr), "cudaFree");
  }

  absl::StatusOr<void*> MallocAsync(std::size_t bytes, Stream stream) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaMallocAsync: zero-byte allocation");
    GPUALLOC_ON_DEVICE(stream.device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaMallocAsync(&p, bytes, Raw(stream)), "cudaMallocAsync"));
    return p;
  }

  absl::Status FreeAsync(void* ptr, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaFreeAsync(ptr, Raw(stream)), "cudaFreeAsync");
  }

  absl::StatusOr<void*> HostAlloc(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaHostAlloc: zero-byte allocation");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(Check(cudaHostAlloc(&p, bytes, cudaHostAllocPortable), "cudaHostAlloc"));
    return p;
  }

  absl::Status HostFree(DeviceIndex device, void* ptr) override {
    GPUALLOC_ON_DEVICE(device);
    return Check(cudaFreeHost(ptr), "cudaFreeHost");
  }

  absl::StatusOr<void*> MallocManaged(DeviceIndex device, std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaMallocManaged: zero-byte allocation");
    GPUALLOC_ON_DEVICE(device);
    void* p = nullptr;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaMallocManaged(&p, bytes, cudaMemAttachGlobal), "cudaMallocManaged"));
    return p;
  }

  absl::Status Prefetch(const void* ptr, std::size_t bytes, DeviceIndex destination,
                        Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    cudaMemLocation where = {};
    where.type = destination == kHostDevice ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
    where.id = destination == kHostDevice ? 0 : destination;
    return Check(cudaMemPrefetchAsync(ptr, bytes, where, 0, Raw(stream)), "cudaMemPrefetchAsync");
  }

  absl::StatusOr<Stream> CreateStream(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    cudaStream_t s = nullptr;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
    return Stream{reinterpret_cast<std::uintptr_t>(s), device};
  }

  absl::StatusOr<Stream> CreateStreamWithPriority(DeviceIndex device, int priority) override {
    GPUALLOC_ON_DEVICE(device);
    cudaStream_t s = nullptr;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority),
              "cudaStreamCreateWithPriority"));
    return Stream{reinterpret_cast<std::uintptr_t>(s), device};
  }

  absl::StatusOr<bool> CanAccessPeer(DeviceIndex device, DeviceIndex peer) override {
    int can = 0;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaDeviceCanAccessPeer(&can, device, peer), "cudaDeviceCanAccessPeer"));
    return can != 0;
  }

  absl::Status EnablePeerAccess(DeviceIndex device, DeviceIndex peer) override {
    if (device == peer) {
      return absl::InvalidArgumentError("cudaDeviceEnablePeerAccess: a device is not its own peer");
    }
    GPUALLOC_ON_DEVICE(device);
    const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      (void)cudaGetLastError();  // not an error to us: clear it
      return absl::OkStatus();
    }
    if (e == cudaErrorPeerAccessUnsupported) {
      (void)cudaGetLastError();
      return absl::FailedPreconditionError(absl::StrFormat(
          "cudaDeviceEnablePeerAccess: device %d cannot reach device %d", device, peer));
    }
    return Check(e, "cudaDeviceEnablePeerAccess");
  }

  absl::Status MemcpyPeerAsync(void* dst, DeviceIndex dst_device, const void* src,
                               DeviceIndex src_device, std::size_t bytes, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, Raw(stream)),
                 "cudaMemcpyPeerAsync");
  }

  absl::StatusOr<int> GetStreamPriority(Stream stream) override {
    int priority = 0;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaStreamGetPriority(Raw(stream), &priority), "cudaStreamGetPriority"));
    return priority;
  }

  absl::Status DestroyStream(Stream stream) override {
    if (stream.is_default()) {
      return absl::InvalidArgumentError("cudaStreamDestroy: the default stream cannot be destroyed");
    }
    GPUALLOC_ON_DEVICE(stream.device);
    GPUALLOC_RETURN_IF_ERROR(Check(cudaStreamSynchronize(Raw(stream)), "cudaStreamSynchronize"));
    return Check(cudaStreamDestroy(Raw(stream)), "cudaStreamDestroy");
  }

  absl::Status SynchronizeStream(Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaStreamSynchronize(Raw(stream)), "cudaStreamSynchronize");
  }

  absl::Status StreamWaitEvent(Stream stream, Event event) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaStreamWaitEvent(Raw(stream), Raw(event), 0), "cudaStreamWaitEvent");
  }

  absl::StatusOr<Event> CreateEvent(DeviceIndex device) override {
    GPUALLOC_ON_DEVICE(device);
    cudaEvent_t e = nullptr;
    GPUALLOC_RETURN_IF_ERROR(
        Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
    return Event{reinterpret_cast<std::uintptr_t>(e), device};
  }

  absl::Status RecordEvent(Event event, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaEventRecord(Raw(event), Raw(stream)), "cudaEventRecord");
  }

  absl::StatusOr<bool> QueryEvent(Event event) override {
    const cudaError_t e = cudaEventQuery(Raw(event));
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    GPUALLOC_RETURN_IF_ERROR(Check(e, "cudaEventQuery"));
    return true;
  }

  absl::Status SynchronizeEvent(Event event) override {
    return Check(cudaEventSynchronize(Raw(event)), "cudaEventSynchronize");
  }

  absl::Status DestroyEvent(Event event) override {
    return Check(cudaEventDestroy(Raw(event)), "cudaEventDestroy");
  }

  absl::Status Memcpy(void* dst, const void* src, std::size_t bytes, CopyKind kind) override {
    if (bytes == 0) return absl::OkStatus();
    GPUALLOC_ASSIGN_OR_RETURN(int owner, CheckDirection(dst, src, kind));
    GPUALLOC_ON_DEVICE(owner);
    return Check(cudaMemcpy(dst, src, bytes, Raw(kind)), "cudaMemcpy");
  }

  absl::Status MemcpyAsync(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                           Stream stream) override {
    if (bytes == 0) return absl::OkStatus();
    GPUALLOC_RETURN_IF_ERROR(CheckDirection(dst, src, kind).status());
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaMemcpyAsync(dst, src, bytes, Raw(kind), Raw(stream)), "cudaMemcpyAsync");
  }

  absl::Status Memset(void* dst, int value, std::size_t bytes) override {
    GPUALLOC_ASSIGN_OR_RETURN(cudaPointerAttributes place, PlaceOf(dst));
    GPUALLOC_ON_DEVICE(OwnerOf(place));
    return Check(cudaMemset(dst, value, bytes), "cudaMemset");
  }

  absl::Status MemsetAsync(void* dst, int value, std::size_t bytes, Stream stream) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaMemsetAsync(dst, value, bytes, Raw(stream)), "cudaMemsetAsync");
  }

  absl::Status LaunchHostFunc(Stream stream, void (*fn)(void*), void* data) override {
    GPUALLOC_ON_DEVICE(stream.device);
    return Check(cudaLaunchHostFunc(Raw(stream), fn, data), "cudaLaunchHostFunc");
  }

  absl::StatusOr<std::uintptr_t> VmReserve(DeviceIndex device, std::size_t bytes) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(device);
    CUdeviceptr p = 0;
    GPUALLOC_RETURN_IF_ERROR(CheckDriver(Vmm().address_reserve(&p, bytes, 0, 0, 0), "cuMemAddressReserve"));
    std::lock_guard<std::mutex> lock(reservations_mu_);
    reservations_[static_cast<std::uintptr_t>(p)] = Reservation{bytes, device};
    return static_cast<std::uintptr_t>(p);
  }

  absl::Status VmRelease(std::uintptr_t address, std::size_t bytes) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(ReservationDevice(address));
    GPUALLOC_RETURN_IF_ERROR(CheckDriver(Vmm().address_free(address, bytes), "cuMemAddressFree"));
    std::lock_guard<std::mutex> lock(reservations_mu_);
    reservations_.erase(address);
    return absl::OkStatus();
  }

  absl::StatusOr<PhysicalChunk> VmCreate(DeviceIndex device, std::size_t bytes) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(device);
    const CUmemAllocationProp prop = PinnedDeviceProp(device);
    CUmemGenericAllocationHandle h = 0;
    GPUALLOC_RETURN_IF_ERROR(CheckDriver(Vmm().create(&h, bytes, &prop, 0), "cuMemCreate"));
    return PhysicalChunk{static_cast<std::uintptr_t>(h), bytes, device};
  }

  absl::Status VmReleasePhysical(PhysicalChunk chunk) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(chunk.device);
    return CheckDriver(Vmm().release(chunk.handle), "cuMemRelease");
  }

  absl::Status VmMap(std::uintptr_t address, PhysicalChunk chunk) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(chunk.device);
    return CheckDriver(Vmm().map(address, chunk.bytes, 0, chunk.handle, 0), "cuMemMap");
  }

  absl::Status VmSetAccess(std::uintptr_t address, std::size_t bytes,
                           DeviceIndex device) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(device);
    // The owner, and every peer that can reach it: memory from cudaMalloc is
    // usable by peers once peer access is on, and expandable memory must be too.
    std::vector<CUmemAccessDesc> descs;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    (void)cudaGetLastError();
    for (int d = 0; d < std::max(count, device + 1); ++d) {
      int can = d == device ? 1 : 0;
      if (d != device && cudaDeviceCanAccessPeer(&can, d, device) != cudaSuccess) {
        (void)cudaGetLastError();
        can = 0;
      }
      if (!can) continue;
      CUmemAccessDesc desc = {};
      desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      desc.location.id = d;
      desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      descs.push_back(desc);
    }
    return CheckDriver(Vmm().set_access(address, bytes, descs.data(), descs.size()), "cuMemSetAccess");
  }

  absl::Status VmUnmap(std::uintptr_t address, std::size_t bytes) override {
    GPUALLOC_RETURN_IF_ERROR(Vmm().status);
    GPUALLOC_DRIVER_ON_DEVICE(ReservationDevice(address));
    return CheckDriver(Vmm().unmap(address, bytes), "cuMemUnmap");
  }

 private:
  struct Reservation {
    std::size_t bytes = 0;
    DeviceIndex device = 0;
  };
  // The device whose reservation holds `address` (VmReserve records it), so
  // unmap and release run with that device's context; device 0 if unknown
  // (the driver then reports the bad address itself).
  DeviceIndex ReservationDevice(std::uintptr_t address) const {
    std::lock_guard<std::mutex> lock(reservations_mu_);
    auto it = reservations_.upper_bound(address);
    if (it == reservations_.begin()) return 0;
    --it;
    return address < it->first + it->second.bytes ? it->second.device : 0;
  }

  mutable std::mutex reservations_mu_;
  std::map<std::uintptr_t, Reservation> reservations_;  // guarded by reservations_mu_
};

#undef GPUALLOC_DRIVER_ON_DEVICE
#undef GPUALLOC_ON_DEVICE

}  // namespace

std::unique_ptr<Backend> MakeCudaBackend() { return std::make_unique<CudaBackend>(); }

absl::Status SetCudaDefaultPoolReleaseThreshold(DeviceIndex device, std::uint64_t bytes) {
  cudaMemPool_t pool = nullptr;
  GPUALLOC_RETURN_IF_ERROR(Check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool"));
  cuuint64_t threshold = bytes;
  return Check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold),
               "cudaMemPoolSetAttribute(ReleaseThreshold)");
}

#endif  // GPUALLOC_HAVE_CUDA

}  // namespace gpualloc
