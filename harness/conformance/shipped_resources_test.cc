// Every memory resource we ship, through the conformance suite, on the
// simulated device (two devices of 128 MiB; its checker judges stream order).
#include "harness/conformance/shipped_resources.h"

namespace gpualloc::harness {
namespace {

DeviceUnderTest TwoSimDevices() {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 128 << 20));
  return {sim, sim};
}

INSTANTIATE_TEST_SUITE_P(Sim, ResourceConformance,
                         ::testing::ValuesIn(ShippedResources(TwoSimDevices,
                                                              /*virtual_memory=*/true)),
                         FactoryName);

}  // namespace
}  // namespace gpualloc::harness
