// How a user puts an allocator of their own through the conformance suite:
// one factory, one macro.
#include "harness/conformance/conformance.h"
#include "harness/conformance/example/first_fit_resource.h"

namespace gpualloc::harness {
namespace {

ResourceUnderTest MakeFirstFit() {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 128 << 20));
  return {FirstFitResource::Create(sim, 0, 96 << 20).value(), sim, /*release_cache=*/nullptr,
          /*record_stream=*/nullptr, /*device=*/sim};
}

GPUALLOC_INSTANTIATE_CONFORMANCE(FirstFitExample, MakeFirstFit);

}  // namespace
}  // namespace gpualloc::harness
