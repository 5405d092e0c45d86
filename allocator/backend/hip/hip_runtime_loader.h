// The HIP runtime, loaded at run time with dlopen instead of linked.
//
// Why: a binary that links libamdhip64 cannot even start on a host without
// ROCm (every NVIDIA GPU runner, and the relocatable GPU bundle), and the
// PyTorch plug-in must need nothing but libc, libstdc++ and the GPU driver.
// Loading it lazily keeps the HIP backend in every build while a missing
// runtime becomes what it is: "no HIP device", reported by the backend.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_RUNTIME_LOADER_H_
#define GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_RUNTIME_LOADER_H_

#ifdef GPUALLOC_HAVE_HIP
#include <hip/hip_runtime_api.h>

#include "absl/status/statusor.h"

namespace gpualloc {

// Every runtime entry point the backend calls: name, return type, parameters.
// The signatures are HIP 5.x's, checked against the header at compile time.
#define GPUALLOC_HIP_RUNTIME_FUNCTIONS(X)                                                     \
  X(hipDeviceGetAttribute, hipError_t, (int*, hipDeviceAttribute_t, int))                     \
  X(hipDeviceSynchronize, hipError_t, ())                                                     \
  X(hipEventCreateWithFlags, hipError_t, (hipEvent_t*, unsigned))                             \
  X(hipEventDestroy, hipError_t, (hipEvent_t))                                                \
  X(hipEventQuery, hipError_t, (hipEvent_t))                                                  \
  X(hipEventRecord, hipError_t, (hipEvent_t, hipStream_t))                                    \
  X(hipEventSynchronize, hipError_t, (hipEvent_t))                                            \
  X(hipFree, hipError_t, (void*))                                                             \
  X(hipFreeAsync, hipError_t, (void*, hipStream_t))                                           \
  X(hipGetDevice, hipError_t, (int*))                                                         \
  X(hipGetDeviceCount, hipError_t, (int*))                                                    \
  X(hipGetDeviceProperties, hipError_t, (hipDeviceProp_t*, int))                              \
  X(hipGetErrorName, const char*, (hipError_t))                                               \
  X(hipGetErrorString, const char*, (hipError_t))                                             \
  X(hipGetLastError, hipError_t, ())                                                          \
  X(hipHostFree, hipError_t, (void*))                                                         \
  X(hipHostMalloc, hipError_t, (void**, size_t, unsigned int))                                \
  X(hipMalloc, hipError_t, (void**, size_t))                                                  \
  X(hipMallocAsync, hipError_t, (void**, size_t, hipStream_t))                                \
  X(hipMallocManaged, hipError_t, (void**, size_t, unsigned int))                             \
  X(hipMemGetInfo, hipError_t, (size_t*, size_t*))                                            \
  X(hipMemPrefetchAsync, hipError_t, (const void*, size_t, int, hipStream_t))                 \
  X(hipMemcpy, hipError_t, (void*, const void*, size_t, hipMemcpyKind))                       \
  X(hipMemcpyAsync, hipError_t, (void*, const void*, size_t, hipMemcpyKind, hipStream_t))     \
  X(hipMemset, hipError_t, (void*, int, size_t))                                              \
  X(hipMemsetAsync, hipError_t, (void*, int, size_t, hipStream_t))                            \
  X(hipPointerGetAttributes, hipError_t, (hipPointerAttribute_t*, const void*))               \
  X(hipSetDevice, hipError_t, (int))                                                          \
  X(hipStreamCreateWithFlags, hipError_t, (hipStream_t*, unsigned int))                       \
  X(hipStreamCreateWithPriority, hipError_t, (hipStream_t*, unsigned int, int))               \
  X(hipDeviceCanAccessPeer, hipError_t, (int*, int, int))                                     \
  X(hipDeviceEnablePeerAccess, hipError_t, (int, unsigned int))                               \
  X(hipMemcpyPeerAsync, hipError_t, (void*, int, const void*, int, size_t, hipStream_t))      \
  X(hipStreamGetPriority, hipError_t, (hipStream_t, int*))                                    \
  X(hipDeviceGetStreamPriorityRange, hipError_t, (int*, int*))                                \
  X(hipStreamDestroy, hipError_t, (hipStream_t))                                              \
  X(hipStreamSynchronize, hipError_t, (hipStream_t))                                          \
  X(hipStreamWaitEvent, hipError_t, (hipStream_t, hipEvent_t, unsigned int))

// Entry points the header declares but some runtimes do not export (HIP
// 5.2.3's libamdhip64 lacks hipLaunchHostFunc): null when absent, and the
// backend reports the feature as Unimplemented.
#define GPUALLOC_HIP_OPTIONAL_FUNCTIONS(X) \
  X(hipLaunchHostFunc, hipError_t, (hipStream_t, hipHostFn_t, void*))

// The loaded entry points; every required member is non-null once loaded.
struct HipRuntime {
#define GPUALLOC_HIP_DECLARE_POINTER(name, ret, params) ret(*name) params = nullptr;
  GPUALLOC_HIP_RUNTIME_FUNCTIONS(GPUALLOC_HIP_DECLARE_POINTER)
  GPUALLOC_HIP_OPTIONAL_FUNCTIONS(GPUALLOC_HIP_DECLARE_POINTER)
#undef GPUALLOC_HIP_DECLARE_POINTER
};

// Loads the runtime once per process (thread-safe) and returns it, or
// FailedPrecondition "no HIP device: cannot load the HIP runtime ..." naming
// the library tried and the loader's reason. GPUALLOC_HIP_LIBRARY, when set,
// names the library to load instead of libamdhip64.so.5 / libamdhip64.so.
// The library stays loaded for the life of the process.
absl::StatusOr<const HipRuntime*> LoadHipRuntime();

}  // namespace gpualloc

#endif  // GPUALLOC_HAVE_HIP
#endif  // GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_RUNTIME_LOADER_H_
