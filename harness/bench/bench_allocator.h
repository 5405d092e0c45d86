// The one adaptor every allocator in the benchmark suite runs behind, so the
// same workloads measure ours and the alternatives side by side in one run.
//
// With a CUDA device, the suite adds the same workloads on the device: ours
// (caching, expandable, size-class) over CUDA, cudaMalloc/cudaFree, and
// cudaMallocAsync/cudaFreeAsync with the default pool's release threshold at
// its maximum (so it caches too).
//
// Ours run over the simulated device, with its cost model at zero (pure
// bookkeeping) or at cudaMalloc-like latencies (calls saved show as time);
// the raw sim is the floor a user gets without a cache; the host allocators
// (glibc, jemalloc, mimalloc, tcmalloc, std::pmr pools) are speed references
// for the bookkeeping. jemalloc, mimalloc and tcmalloc are loaded with dlopen
// and called through their own entry points, so none of them replaces the
// process's malloc.
#ifndef GPUALLOC_HARNESS_BENCH_BENCH_ALLOCATOR_H_
#define GPUALLOC_HARNESS_BENCH_BENCH_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gpualloc::bench {

class BenchAllocator {
 public:
  virtual ~BenchAllocator() = default;
  // Null on failure. `stream` picks one of the streams the allocator was
  // made with (host allocators ignore it). Thread-safe when the spec says so.
  virtual void* Allocate(std::size_t bytes, int stream) = 0;
  virtual void Deallocate(void* p, std::size_t bytes, int stream) = 0;
  // Calls that reached the device (malloc/free, pinned alloc/free, VM map and
  // unmap) so far; -1 for host allocators.
  virtual std::int64_t UpstreamCalls() const { return -1; }
  // Bytes held from the device at the peak; -1 for host allocators.
  virtual std::int64_t PeakReservedBytes() const { return -1; }
  // Reads the allocator's statistics, as a monitoring poll would (no-op for
  // allocators without any).
  virtual void PollStats() {}
};

// kDevice: on the real CUDA device (ours over CUDA, cudaMalloc/cudaFree,
// cudaMallocAsync/cudaFreeAsync); unavailable, with the runtime's reason,
// where there is no device.
enum class Family { kOurs, kFloor, kHost, kDevice };

struct AllocatorSpec {
  std::string name;  // "caching", "mimalloc", ...
  Family family;
  bool thread_safe = true;
  // `streams`: how many streams the workload will use (0 .. streams-1).
  std::function<absl::StatusOr<std::unique_ptr<BenchAllocator>>(int streams)> make;
};

// Every allocator of the suite, ours first. Host allocators whose library is
// missing are still listed; making one returns the dlopen error.
const std::vector<AllocatorSpec>& AllAllocators();

// The caching allocator behind a TrackingAdaptor (leak tracking on, stacks
// off), for the tracking-overhead comparison.
absl::StatusOr<std::unique_ptr<BenchAllocator>> MakeTrackedCaching(int streams);

// The pinned host allocator (zero-latency sim) with `cache_limit_bytes` as
// its cache bound, for the bound's effect on workload 2.
std::unique_ptr<BenchAllocator> MakePinnedWithBound(std::size_t cache_limit_bytes);

// Must run before anything else in main: jemalloc needs static TLS space that
// only exists if the process started with it, so main re-executes itself once
// with the glibc tunable set. Returns only when the tunable is in place.
void EnsureStaticTlsForDlopen(int argc, char** argv);

}  // namespace gpualloc::bench

#endif  // GPUALLOC_HARNESS_BENCH_BENCH_ALLOCATOR_H_
