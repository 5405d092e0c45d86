// Allocator benchmarks (Google Benchmark): `./bazelw run -c opt //harness/bench`.
// Speed goals live here, never in timed tests.
//
//  - BM_Pair/<stack>/<bytes>: one allocate + free of the same size, single
//    thread (workload 1 of docs/performance goals): the cached fast path.
//  - BM_TrackingOverhead: the same pair through a TrackingAdaptor (leaks,
//    stacks off) over the caching allocator; compare with BM_Pair/caching.
//  - BM_FreeHoles/<holes>: allocate and free 1 KiB with 4,096 .. 65,536 free
//    holes in the pool (workload 4): best fit must stay O(log n).
#include <cstdlib>
#include <memory>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/observe/tracking_adaptor.h"
#include "allocator/resource/backend_resource.h"
#include "benchmark/benchmark.h"

namespace gpualloc {
namespace {

std::shared_ptr<SimBackend> Sim() {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(1, std::size_t{8} << 30));
}

void RunPairs(benchmark::State& state, MemoryResource& r) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    absl::StatusOr<Allocation> a = r.Allocate(bytes);
    benchmark::DoNotOptimize(a);
    if (!a.ok() || !r.Deallocate(*a).ok()) state.SkipWithError("allocation failed");
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_PairCaching(benchmark::State& state) {
  auto cache = CachingAllocator::Create(Sim(), 0, {}).value();
  RunPairs(state, *cache);
}
BENCHMARK(BM_PairCaching)->Arg(256)->Arg(64 << 10)->Arg(4 << 20);

void BM_TrackingOverhead(benchmark::State& state) {
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(Sim(), 0, {}).value();
  TrackingAdaptor tracked(cache);
  RunPairs(state, tracked);
}
BENCHMARK(BM_TrackingOverhead)->Arg(256)->Arg(64 << 10)->Arg(4 << 20);

void BM_StatsRead(benchmark::State& state) {
  auto cache = CachingAllocator::Create(Sim(), 0, {}).value();
  for (auto _ : state) benchmark::DoNotOptimize(cache->stats());
}
BENCHMARK(BM_StatsRead);

void BM_PairRawSim(benchmark::State& state) {
  BackendResource raw(Sim(), 0);
  RunPairs(state, raw);
}
BENCHMARK(BM_PairRawSim)->Arg(256)->Arg(64 << 10)->Arg(4 << 20);

void BM_PairGlibcMalloc(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PairGlibcMalloc)->Arg(256)->Arg(64 << 10)->Arg(4 << 20);

void BM_FreeHoles(benchmark::State& state) {
  const auto holes = static_cast<std::size_t>(state.range(0));
  auto cache = CachingAllocator::Create(Sim(), 0, {}).value();
  // Alternate kept and freed 2 KiB blocks: `holes` free holes that cannot merge.
  std::vector<Allocation> keep, hole;
  for (std::size_t i = 0; i < holes; ++i) {
    hole.push_back(cache->Allocate(2048).value());
    keep.push_back(cache->Allocate(512).value());
  }
  for (const Allocation& a : hole) (void)cache->Deallocate(a);
  for (auto _ : state) {
    absl::StatusOr<Allocation> a = cache->Allocate(1024);
    benchmark::DoNotOptimize(a);
    if (!a.ok() || !cache->Deallocate(*a).ok()) state.SkipWithError("allocation failed");
  }
  state.counters["holes"] = static_cast<double>(holes);
  for (const Allocation& a : keep) (void)cache->Deallocate(a);
}
BENCHMARK(BM_FreeHoles)->Arg(4096)->Arg(16384)->Arg(65536);

}  // namespace
}  // namespace gpualloc

BENCHMARK_MAIN();
