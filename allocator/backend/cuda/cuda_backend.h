// CudaBackend: the Backend over the real CUDA runtime (cudart, linked
// statically) and, for virtual memory, the driver API's cuMem* calls, looked
// up at run time with cudaGetDriverEntryPointByVersion so binaries load on
// machines without a driver.
//
// With no driver or no device every call fails with FailedPrecondition
// "no CUDA device: <cuda error name>: <cuda error string>". When the build
// had no CUDA toolkit, the same holds with a message saying so.
// Thread-safe: the CUDA runtime is; the backend keeps no mutable state apart
// from the lazily resolved driver entry points (resolved once, thread-safely).
#ifndef GPUALLOC_ALLOCATOR_BACKEND_CUDA_CUDA_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>

#include "allocator/backend/backend.h"

namespace gpualloc {

// True when this binary was built with the CUDA toolkit.
bool CudaBackendCompiledIn();

std::unique_ptr<Backend> MakeCudaBackend();

// Sets the release threshold of `device`'s default stream-ordered memory
// pool (cudaMemPoolAttrReleaseThreshold), e.g. to UINT64_MAX so
// cudaFreeAsync keeps memory cached, as a fair cudaMallocAsync baseline.
// FailedPrecondition without a device or pools.
absl::Status SetCudaDefaultPoolReleaseThreshold(DeviceIndex device, std::uint64_t bytes);

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_CUDA_CUDA_BACKEND_H_
