// HipBackend: the Backend over the real HIP runtime (libamdhip64). HIP 5.2
// has stream-ordered allocation (hipMallocAsync) but no virtual-memory API,
// so the VM calls return Unimplemented and DeviceProperties says so.
//
// With no device every call fails with FailedPrecondition
// "no HIP device: <hip error name>: <hip error string>". When the build had
// no HIP runtime, the same holds with a message saying so.
// Thread-safe: the HIP runtime is, and the backend keeps no state.
#ifndef GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_BACKEND_H_
#define GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_BACKEND_H_

#include <memory>

#include "allocator/backend/backend.h"

namespace gpualloc {

// True when this binary was built with the HIP runtime.
bool HipBackendCompiledIn();

std::unique_ptr<Backend> MakeHipBackend();

}  // namespace gpualloc

#endif  // GPUALLOC_ALLOCATOR_BACKEND_HIP_HIP_BACKEND_H_
