// What a `gpu`-tagged test does first: make sure the machine has a device of
// its runtime. A GPU run on a runner without one is a failure, with one
// clear message, never a quiet skip that makes a broken runner look green.
#ifndef GPUALLOC_HARNESS_GPU_REQUIRE_DEVICE_H_
#define GPUALLOC_HARNESS_GPU_REQUIRE_DEVICE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "allocator/backend/backend.h"

namespace gpualloc::harness {

// The backend for `runtime` ("cuda" or "hip"), as the tests build it.
std::unique_ptr<Backend> MakeRealBackend(const std::string& runtime);

// OK when `runtime` has at least one device here; otherwise
// FailedPrecondition "no CUDA device: <the runtime's reason>; this is a GPU
// run: run it on a machine with a CUDA device, or leave out --config=gpu".
absl::Status RequireDevice(const std::string& runtime);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_GPU_REQUIRE_DEVICE_H_
