// Every memory resource we ship, through the conformance suite. A new
// resource is covered by adding one factory and one line here.
#include "allocator/caching/caching_allocator.h"
#include "allocator/resource/backend_resource.h"
#include "harness/conformance/conformance.h"

namespace gpualloc::harness {
namespace {

std::shared_ptr<SimBackend> TwoDevices() {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(2, 128 << 20));
}

ResourceUnderTest MakeBackendResource() {
  auto sim = TwoDevices();
  return {std::make_shared<BackendResource>(sim, 0), sim, nullptr};
}

ResourceUnderTest MakeCaching(CrossStreamReuse policy) {
  auto sim = TwoDevices();
  CachingOptions o;
  o.cross_stream = policy;
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, o).value();
  return {cache, sim, [cache] { return cache->EmptyCache(); }};
}

GPUALLOC_INSTANTIATE_CONFORMANCE(Backend, MakeBackendResource);
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingFollowEvents,
                                 [] { return MakeCaching(CrossStreamReuse::kFollowEvents); });
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingOpportunistic,
                                 [] { return MakeCaching(CrossStreamReuse::kOpportunistic); });
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingNoCrossStream,
                                 [] { return MakeCaching(CrossStreamReuse::kNone); });

}  // namespace
}  // namespace gpualloc::harness
