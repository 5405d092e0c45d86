// Every memory resource we ship, through the conformance suite. A new
// resource is covered by adding one factory and one line here.
#include "allocator/caching/arena_resource.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/policy/limiting_adaptor.h"
#include "allocator/policy/pressure_adaptor.h"
#include "allocator/resource/backend_resource.h"
#include "harness/conformance/conformance.h"

namespace gpualloc::harness {
namespace {

std::shared_ptr<SimBackend> TwoDevices() {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(2, 128 << 20));
}

ResourceUnderTest MakeBackendResource() {
  auto sim = TwoDevices();
  return {std::make_shared<BackendResource>(sim, 0), sim, nullptr, nullptr};
}

ResourceUnderTest MakeCaching(CrossStreamReuse policy, bool expandable = false) {
  auto sim = TwoDevices();
  CachingOptions o;
  o.cross_stream = policy;
  o.expandable_segments = expandable;
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, o).value();
  return {cache, sim, [cache] { return cache->EmptyCache(); },
          [cache](const Allocation& a, Stream s) { return cache->RecordStream(a, s); }};
}

// Adaptor stacks read like sentences: pressure(limiting(caching(sim))).
ResourceUnderTest MakeLimitedCache() {
  ResourceUnderTest cache = MakeCaching(CrossStreamReuse::kFollowEvents);
  cache.resource = std::make_shared<LimitingAdaptor>(
      cache.resource, std::vector<LimitRule>{{LimitScope::kResource, 96 << 20, LimitMode::kHard},
                                             {LimitScope::kTag, 64 << 20, LimitMode::kSoft}});
  return cache;
}

ResourceUnderTest MakePressureOverLimitedCache() {
  ResourceUnderTest limited = MakeLimitedCache();
  PressureOptions o;
  o.capacity_bytes = 128 << 20;
  o.shrink = limited.release_cache ? [release = limited.release_cache](std::size_t) {
    return release();
  } : std::function<absl::Status(std::size_t)>();
  limited.resource = PressureAdaptor::Create(limited.resource, o).value();
  return limited;
}

ResourceUnderTest MakeLimitedBackend() {
  ResourceUnderTest raw = MakeBackendResource();
  raw.resource = std::make_shared<LimitingAdaptor>(
      raw.resource, std::vector<LimitRule>{{LimitScope::kThread, 100 << 20, LimitMode::kHard}});
  return raw;
}

ResourceUnderTest MakeSizeClassPoolOverCaching() {
  ResourceUnderTest cache = MakeCaching(CrossStreamReuse::kFollowEvents);
  std::shared_ptr<SizeClassPool> pool =
      SizeClassPool::Create(cache.resource, cache.sim, SizeClassOptions{}).value();
  auto release = cache.release_cache;
  cache.release_cache = [pool, release] {
    absl::Status st = pool->Trim();
    return st.ok() ? release() : st;
  };
  cache.resource = pool;
  cache.record_stream = nullptr;  // the pool's blocks are not the cache's
  return cache;
}

ResourceUnderTest MakeArenaOverBackend() {
  ResourceUnderTest raw = MakeBackendResource();
  ArenaOptions o;
  o.pack_threshold = 1 << 20;
  o.chunk_bytes = 16 << 20;
  raw.resource = ArenaResource::Create(raw.resource, o).value();
  return raw;
}

GPUALLOC_INSTANTIATE_CONFORMANCE(Backend, MakeBackendResource);
GPUALLOC_INSTANTIATE_CONFORMANCE(SizeClassPoolOverCaching, MakeSizeClassPoolOverCaching);
GPUALLOC_INSTANTIATE_CONFORMANCE(ArenaOverBackend, MakeArenaOverBackend);
GPUALLOC_INSTANTIATE_CONFORMANCE(LimitingOverCaching, MakeLimitedCache);
GPUALLOC_INSTANTIATE_CONFORMANCE(PressureOverLimitingOverCaching, MakePressureOverLimitedCache);
GPUALLOC_INSTANTIATE_CONFORMANCE(LimitingOverBackend, MakeLimitedBackend);
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingFollowEvents,
                                 [] { return MakeCaching(CrossStreamReuse::kFollowEvents); });
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingOpportunistic,
                                 [] { return MakeCaching(CrossStreamReuse::kOpportunistic); });
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingExpandable, [] {
  return MakeCaching(CrossStreamReuse::kFollowEvents, /*expandable=*/true);
});
GPUALLOC_INSTANTIATE_CONFORMANCE(CachingNoCrossStream,
                                 [] { return MakeCaching(CrossStreamReuse::kNone); });

}  // namespace
}  // namespace gpualloc::harness
