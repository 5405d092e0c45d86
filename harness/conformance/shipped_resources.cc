#include "harness/conformance/shipped_resources.h"

#include "allocator/caching/arena_resource.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/policy/limiting_adaptor.h"
#include "allocator/policy/pressure_adaptor.h"
#include "allocator/resource/backend_resource.h"

namespace gpualloc::harness {
namespace {

ResourceUnderTest MakeBackendResource(const DeviceMaker& make) {
  const DeviceUnderTest d = make();
  return {std::make_shared<BackendResource>(d.device, 0), d.sim, nullptr, nullptr, d.device};
}

ResourceUnderTest MakeCaching(const DeviceMaker& make, CrossStreamReuse policy,
                              bool expandable = false) {
  const DeviceUnderTest d = make();
  CachingOptions o;
  o.cross_stream = policy;
  o.expandable_segments = expandable;
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(d.device, 0, o).value();
  return {cache, d.sim, [cache] { return cache->EmptyCache(); },
          [cache](const Allocation& a, Stream s) { return cache->RecordStream(a, s); }, d.device};
}

// Adaptor stacks read like sentences: pressure(limiting(caching(sim))).
ResourceUnderTest MakeLimitedCache(const DeviceMaker& make) {
  ResourceUnderTest cache = MakeCaching(make, CrossStreamReuse::kFollowEvents);
  cache.resource = std::make_shared<LimitingAdaptor>(
      cache.resource, std::vector<LimitRule>{{LimitScope::kResource, 96 << 20, LimitMode::kHard},
                                             {LimitScope::kTag, 64 << 20, LimitMode::kSoft}});
  return cache;
}

ResourceUnderTest MakePressureOverLimitedCache(const DeviceMaker& make) {
  ResourceUnderTest limited = MakeLimitedCache(make);
  PressureOptions o;
  o.capacity_bytes = 128 << 20;
  o.shrink = limited.release_cache ? [release = limited.release_cache](std::size_t) {
    return release();
  } : std::function<absl::Status(std::size_t)>();
  limited.resource = PressureAdaptor::Create(limited.resource, o).value();
  return limited;
}

ResourceUnderTest MakeLimitedBackend(const DeviceMaker& make) {
  ResourceUnderTest raw = MakeBackendResource(make);
  raw.resource = std::make_shared<LimitingAdaptor>(
      raw.resource, std::vector<LimitRule>{{LimitScope::kThread, 100 << 20, LimitMode::kHard}});
  return raw;
}

ResourceUnderTest MakeSizeClassPoolOverCaching(const DeviceMaker& make) {
  ResourceUnderTest cache = MakeCaching(make, CrossStreamReuse::kFollowEvents);
  std::shared_ptr<SizeClassPool> pool =
      SizeClassPool::Create(cache.resource, cache.device, SizeClassOptions{}).value();
  auto release = cache.release_cache;
  cache.release_cache = [pool, release] {
    absl::Status st = pool->Trim();
    return st.ok() ? release() : st;
  };
  cache.resource = pool;
  cache.record_stream = nullptr;  // the pool's blocks are not the cache's
  return cache;
}

ResourceUnderTest MakeArenaOverBackend(const DeviceMaker& make) {
  ResourceUnderTest raw = MakeBackendResource(make);
  ArenaOptions o;
  o.pack_threshold = 1 << 20;
  o.chunk_bytes = 16 << 20;
  raw.resource = ArenaResource::Create(raw.resource, o).value();
  return raw;
}

}  // namespace

std::vector<ResourceFactory> ShippedResources(DeviceMaker make, bool virtual_memory) {
  std::vector<ResourceFactory> all = {
      {"Backend", [make] { return MakeBackendResource(make); }},
      {"SizeClassPoolOverCaching", [make] { return MakeSizeClassPoolOverCaching(make); }},
      {"ArenaOverBackend", [make] { return MakeArenaOverBackend(make); }},
      {"LimitingOverCaching", [make] { return MakeLimitedCache(make); }},
      {"PressureOverLimitingOverCaching", [make] { return MakePressureOverLimitedCache(make); }},
      {"LimitingOverBackend", [make] { return MakeLimitedBackend(make); }},
      {"CachingFollowEvents",
       [make] { return MakeCaching(make, CrossStreamReuse::kFollowEvents); }},
      {"CachingOpportunistic",
       [make] { return MakeCaching(make, CrossStreamReuse::kOpportunistic); }},
      {"CachingNoCrossStream", [make] { return MakeCaching(make, CrossStreamReuse::kNone); }},
  };
  if (virtual_memory) {
    all.push_back({"CachingExpandable", [make] {
                     return MakeCaching(make, CrossStreamReuse::kFollowEvents, /*expandable=*/true);
                   }});
  }
  return all;
}

std::string FactoryName(const ::testing::TestParamInfo<ResourceFactory>& info) {
  return info.param.name;
}

}  // namespace gpualloc::harness
