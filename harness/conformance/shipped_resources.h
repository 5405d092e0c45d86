// Every memory resource we ship, as conformance factories over any device:
// the simulated one (shipped_resources_test) or a real GPU
// (harness/gpu/conformance_gpu_test). A new resource is covered everywhere
// by adding one factory here.
#ifndef GPUALLOC_HARNESS_CONFORMANCE_SHIPPED_RESOURCES_H_
#define GPUALLOC_HARNESS_CONFORMANCE_SHIPPED_RESOURCES_H_

#include <functional>
#include <memory>
#include <vector>

#include "allocator/backend/backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "harness/conformance/conformance.h"

namespace gpualloc::harness {

// A fresh device for one case: `device` is what the resources run on; `sim`
// is the same object when it is the simulated device, null on a real one.
struct DeviceUnderTest {
  std::shared_ptr<Backend> device;
  std::shared_ptr<SimBackend> sim;
};
using DeviceMaker = std::function<DeviceUnderTest()>;

// One factory per shipped resource and adaptor stack, over `make`'s device.
// `virtual_memory` says whether the device can map memory (expandable
// segments); without it that stack is left out.
std::vector<ResourceFactory> ShippedResources(DeviceMaker make, bool virtual_memory);

// GoogleTest parameter names: the factory's name.
std::string FactoryName(const ::testing::TestParamInfo<ResourceFactory>& info);

}  // namespace gpualloc::harness

#endif  // GPUALLOC_HARNESS_CONFORMANCE_SHIPPED_RESOURCES_H_
