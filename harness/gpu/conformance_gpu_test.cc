// The conformance suite over a real device: every shipped resource and
// adaptor stack, every case, including the stream-order cases (real streams
// held back by a host function, contents read back to judge the order) and
// expandable segments on the runtime's virtual memory where it has it.
#include "allocator/backend/backend.h"
#include "harness/conformance/shipped_resources.h"
#include "harness/gpu/require_device.h"

namespace gpualloc::harness {
namespace {

DeviceUnderTest RealDevice() {
  return {std::shared_ptr<Backend>(MakeRealBackend(GPUALLOC_TEST_RUNTIME)), nullptr};
}

bool HasVirtualMemory() {
  absl::StatusOr<DeviceProperties> p = MakeRealBackend(GPUALLOC_TEST_RUNTIME)->GetDeviceProperties(0);
  return p.ok() && p->supports_virtual_memory;
}

INSTANTIATE_TEST_SUITE_P(Device, ResourceConformance,
                         ::testing::ValuesIn(ShippedResources(RealDevice, HasVirtualMemory())),
                         FactoryName);

}  // namespace
}  // namespace gpualloc::harness
