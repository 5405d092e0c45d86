#include "harness/bench/bench_allocator.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <memory_resource>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "allocator/backend/cuda/cuda_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/caching/size_class_pool.h"
#include "allocator/host/pinned_host_allocator.h"
#include "allocator/observe/tracking_adaptor.h"
#include "allocator/resource/backend_resource.h"

namespace gpualloc::bench {
namespace {

constexpr std::size_t kDeviceCapacity = std::size_t{32} << 30;  // address space only

std::shared_ptr<SimBackend> MakeSim(bool cuda_latency) {
  SimOptions options = SimOptions::WithDevices(1, kDeviceCapacity);
  options.pinned_capacity_bytes = kDeviceCapacity;
  if (cuda_latency) options.cost = SimCostModel::CudaLike();
  // Benchmarks measure allocators, not the sim's stream-order checker (its
  // bookkeeping would be counted against every allocator over the sim).
  options.check_stream_order = false;
  return std::make_shared<SimBackend>(options);
}

std::int64_t DeviceCalls(const SimBackend& sim) {
  const SimAccounting a = sim.Accounting();
  std::int64_t calls = 0;
  for (BackendOp op : {BackendOp::kMalloc, BackendOp::kFree, BackendOp::kMallocAsync,
                       BackendOp::kFreeAsync, BackendOp::kHostAlloc, BackendOp::kHostFree,
                       BackendOp::kVmCreate, BackendOp::kVmReleasePhysical}) {
    calls += static_cast<std::int64_t>(a.calls_to(op));
  }
  return calls;
}

// Any MemoryResource over a device (the sim or a real one), with `streams`
// streams (0 is the default stream). Upstream calls and peak device bytes
// come from the sim's accounting; on a real device the peak comes from
// `reserving` (the caching allocator's reserved bytes), and calls are not
// counted.
class OurResource final : public BenchAllocator {
 public:
  OurResource(std::shared_ptr<Backend> device, std::shared_ptr<SimBackend> sim,
              std::shared_ptr<MemoryResource> resource, std::shared_ptr<MemoryResource> reserving,
              std::vector<Stream> streams)
      : device_(std::move(device)),
        sim_(std::move(sim)),
        resource_(std::move(resource)),
        reserving_(std::move(reserving)),
        streams_(std::move(streams)) {}
  ~OurResource() override {
    (void)device_->DeviceSynchronize(0);
    resource_.reset();
    reserving_.reset();
    for (Stream s : streams_) {
      if (!s.is_default()) device_->DestroyStream(s).IgnoreError();
    }
  }
  void* Allocate(std::size_t bytes, int stream) override {
    absl::StatusOr<Allocation> a = resource_->Allocate(bytes, streams_[stream]);
    return a.ok() ? a->ptr : nullptr;
  }
  void Deallocate(void* p, std::size_t bytes, int stream) override {
    resource_->Deallocate(Allocation{p, bytes, streams_[stream]}).IgnoreError();
  }
  std::int64_t UpstreamCalls() const override { return sim_ ? DeviceCalls(*sim_) : -1; }
  std::int64_t PeakReservedBytes() const override {
    if (sim_) return static_cast<std::int64_t>(sim_->Accounting().devices[0].peak_device_bytes);
    return reserving_ ? reserving_->stats().reserved_bytes.peak : -1;
  }
  void PollStats() override { benchmark_sink_ = resource_->stats().allocated_bytes.current; }

 private:
  std::shared_ptr<Backend> device_;
  std::shared_ptr<SimBackend> sim_;  // null on a real device
  std::shared_ptr<MemoryResource> resource_;
  std::shared_ptr<MemoryResource> reserving_;
  std::vector<Stream> streams_;
  volatile std::int64_t benchmark_sink_ = 0;
};

absl::StatusOr<std::vector<Stream>> MakeStreams(Backend& device, int streams) {
  std::vector<Stream> out = {Stream::Default(0)};
  while (static_cast<int>(out.size()) < streams) {
    absl::StatusOr<Stream> s = device.CreateStream(0);
    if (!s.ok()) return s.status();
    out.push_back(*s);
  }
  return out;
}

// The front cache's size in the caching_front runs.
constexpr std::size_t kBenchFrontCacheBlocks = 16;

enum class Ours { kCaching, kCachingFront, kSizeClass, kRaw, kTrackedCaching };

// A caching allocator over `device`, under a size-class pool if asked; the
// caching allocator itself through `cache` (its reserved bytes are the
// device memory held).
absl::StatusOr<std::shared_ptr<MemoryResource>> CachingStack(
    std::shared_ptr<Backend> device, CachingOptions options, bool size_class,
    std::shared_ptr<MemoryResource>* cache) {
  absl::StatusOr<std::unique_ptr<CachingAllocator>> created =
      CachingAllocator::Create(device, 0, options);
  if (!created.ok()) return created.status();
  *cache = std::move(*created);
  if (!size_class) return *cache;
  absl::StatusOr<std::unique_ptr<SizeClassPool>> pool =
      SizeClassPool::Create(*cache, device, SizeClassOptions{});
  if (!pool.ok()) return pool.status();
  return std::shared_ptr<MemoryResource>(std::move(*pool));
}

absl::StatusOr<std::unique_ptr<BenchAllocator>> MakeOurs(Ours kind, bool cuda_latency,
                                                         int streams) {
  std::shared_ptr<SimBackend> sim = MakeSim(cuda_latency);
  std::shared_ptr<MemoryResource> resource;
  if (kind == Ours::kRaw) {
    resource = std::make_shared<BackendResource>(sim, 0);
  } else {
    std::shared_ptr<MemoryResource> cache;
    CachingOptions options;
    if (kind == Ours::kCachingFront) options.front_cache_blocks = kBenchFrontCacheBlocks;
    absl::StatusOr<std::shared_ptr<MemoryResource>> stack =
        CachingStack(sim, options, kind == Ours::kSizeClass, &cache);
    if (!stack.ok()) return stack.status();
    resource = *std::move(stack);
    if (kind == Ours::kTrackedCaching) resource = std::make_shared<TrackingAdaptor>(resource);
  }
  absl::StatusOr<std::vector<Stream>> s = MakeStreams(*sim, streams);
  if (!s.ok()) return s.status();
  return std::make_unique<OurResource>(sim, sim, resource, nullptr, *std::move(s));
}

// cudaMallocAsync/cudaFreeAsync on the caller's stream, as a resource.
class StreamOrderedResource final : public MemoryResource {
 public:
  explicit StreamOrderedResource(std::shared_ptr<Backend> device) : device_(std::move(device)) {}
  absl::string_view name() const override { return "cudaMallocAsync"; }
  DeviceIndex device() const override { return 0; }
  std::size_t alignment() const override { return 256; }
  MemoryStats stats() const override { return {}; }

 private:
  absl::StatusOr<Allocation> DoAllocate(std::size_t bytes, Stream stream) override {
    absl::StatusOr<void*> p = device_->MallocAsync(bytes, stream);
    if (!p.ok()) return p.status();
    return Allocation{*p, bytes, stream};
  }
  absl::Status DoDeallocate(const Allocation& a, Stream stream) override {
    return device_->FreeAsync(a.ptr, stream);
  }
  std::shared_ptr<Backend> device_;
};

enum class OnCuda { kCaching, kExpandable, kSizeClass, kCudaMalloc, kCudaMallocAsync };

absl::StatusOr<std::unique_ptr<BenchAllocator>> MakeOnCuda(OnCuda kind, int streams) {
  std::shared_ptr<Backend> cuda = MakeCudaBackend();
  absl::StatusOr<int> count = cuda->DeviceCount();
  if (!count.ok()) return absl::UnavailableError(count.status().message());
  std::shared_ptr<MemoryResource> resource;
  std::shared_ptr<MemoryResource> reserving;  // cudaMallocAsync's pool reports nothing
  if (kind == OnCuda::kCudaMalloc) {
    resource = std::make_shared<BackendResource>(cuda, 0);
    reserving = resource;
  } else if (kind == OnCuda::kCudaMallocAsync) {
    absl::Status st = SetCudaDefaultPoolReleaseThreshold(0, ~std::uint64_t{0});
    if (!st.ok()) return absl::UnavailableError(st.message());
    resource = std::make_shared<StreamOrderedResource>(cuda);
  } else {
    CachingOptions options;
    options.expandable_segments = kind == OnCuda::kExpandable;
    absl::StatusOr<std::shared_ptr<MemoryResource>> stack =
        CachingStack(cuda, options, kind == OnCuda::kSizeClass, &reserving);
    if (!stack.ok()) return stack.status();
    resource = *std::move(stack);
  }
  absl::StatusOr<std::vector<Stream>> s = MakeStreams(*cuda, streams);
  if (!s.ok()) return s.status();
  return std::make_unique<OurResource>(cuda, nullptr, resource, reserving, *std::move(s));
}

class OurPinned final : public BenchAllocator {
 public:
  explicit OurPinned(bool cuda_latency, PinnedHostOptions options = {})
      : sim_(MakeSim(cuda_latency)), pinned_(sim_, options) {}
  void* Allocate(std::size_t bytes, int) override {
    absl::StatusOr<PinnedBlock> b = pinned_.Allocate(bytes, 0);
    return b.ok() ? b->ptr : nullptr;
  }
  void Deallocate(void* p, std::size_t bytes, int) override {
    pinned_.Deallocate(PinnedBlock{p, bytes, 0}).IgnoreError();
  }
  std::int64_t UpstreamCalls() const override { return DeviceCalls(*sim_); }
  std::int64_t PeakReservedBytes() const override {
    return static_cast<std::int64_t>(pinned_.stats().peak_reserved_bytes);
  }

 private:
  std::shared_ptr<SimBackend> sim_;
  PinnedHostAllocator pinned_;
};

// malloc/free pairs: glibc's, or a library's own entry points from dlopen.
class MallocFamily final : public BenchAllocator {
 public:
  using MallocFn = void* (*)(std::size_t);
  using FreeFn = void (*)(void*);
  MallocFamily(MallocFn m, FreeFn f) : malloc_(m), free_(f) {}
  void* Allocate(std::size_t bytes, int) override { return malloc_(bytes); }
  void Deallocate(void* p, std::size_t, int) override { free_(p); }

 private:
  MallocFn malloc_;
  FreeFn free_;
};

absl::StatusOr<std::unique_ptr<BenchAllocator>> FromLibrary(const char* soname,
                                                            const char* malloc_name,
                                                            const char* free_name) {
  // Loaded once and never closed: a malloc library must outlive its blocks.
  // RTLD_LOCAL keeps the process's own malloc glibc's.
  void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return absl::UnavailableError(absl::StrCat("dlopen ", soname, ": ", dlerror()));
  }
  auto m = reinterpret_cast<MallocFamily::MallocFn>(dlsym(handle, malloc_name));
  auto f = reinterpret_cast<MallocFamily::FreeFn>(dlsym(handle, free_name));
  if (m == nullptr || f == nullptr) {
    return absl::UnavailableError(absl::StrCat(soname, " has no ", malloc_name, "/", free_name));
  }
  return std::make_unique<MallocFamily>(m, f);
}

template <typename Pool>
class PmrPool final : public BenchAllocator {
 public:
  void* Allocate(std::size_t bytes, int) override {
    return pool_.allocate(bytes, alignof(std::max_align_t));
  }
  void Deallocate(void* p, std::size_t bytes, int) override {
    pool_.deallocate(p, bytes, alignof(std::max_align_t));
  }

 private:
  Pool pool_;
};

template <typename T>
absl::StatusOr<std::unique_ptr<BenchAllocator>> Make() {
  return std::make_unique<T>();
}

}  // namespace

std::unique_ptr<BenchAllocator> MakePinnedWithBound(std::size_t cache_limit_bytes) {
  PinnedHostOptions options;
  options.cache_limit_bytes = cache_limit_bytes;
  return std::make_unique<OurPinned>(false, options);
}

const std::vector<AllocatorSpec>& AllAllocators() {
  static const auto* const kAll = new std::vector<AllocatorSpec>{
      {"caching", Family::kOurs, true,
       [](int s) { return MakeOurs(Ours::kCaching, false, s); }},
      {"caching_front", Family::kOurs, true,
       [](int s) { return MakeOurs(Ours::kCachingFront, false, s); }},
      {"caching_cudalat", Family::kOurs, true,
       [](int s) { return MakeOurs(Ours::kCaching, true, s); }},
      {"size_class", Family::kOurs, true,
       [](int s) { return MakeOurs(Ours::kSizeClass, false, s); }},
      {"size_class_cudalat", Family::kOurs, true,
       [](int s) { return MakeOurs(Ours::kSizeClass, true, s); }},
      {"pinned_host", Family::kOurs, true,
       [](int) -> absl::StatusOr<std::unique_ptr<BenchAllocator>> {
         return std::make_unique<OurPinned>(false);
       }},
      {"pinned_host_cudalat", Family::kOurs, true,
       [](int) -> absl::StatusOr<std::unique_ptr<BenchAllocator>> {
         return std::make_unique<OurPinned>(true);
       }},
      {"raw_sim", Family::kFloor, true, [](int s) { return MakeOurs(Ours::kRaw, false, s); }},
      {"raw_sim_cudalat", Family::kFloor, true,
       [](int s) { return MakeOurs(Ours::kRaw, true, s); }},
      {"glibc", Family::kHost, true,
       [](int) -> absl::StatusOr<std::unique_ptr<BenchAllocator>> {
         return std::make_unique<MallocFamily>(&std::malloc, &std::free);
       }},
      {"jemalloc", Family::kHost, true,
       [](int) { return FromLibrary("libjemalloc.so.2", "malloc", "free"); }},
      {"mimalloc", Family::kHost, true,
       [](int) { return FromLibrary("libmimalloc.so.2", "mi_malloc", "mi_free"); }},
      {"tcmalloc", Family::kHost, true,
       [](int) { return FromLibrary("libtcmalloc_minimal.so.4", "tc_malloc", "tc_free"); }},
      {"pmr_sync", Family::kHost, true,
       [](int) { return Make<PmrPool<std::pmr::synchronized_pool_resource>>(); }},
      {"pmr_unsync", Family::kHost, false,
       [](int) { return Make<PmrPool<std::pmr::unsynchronized_pool_resource>>(); }},
      {"cuda_caching", Family::kDevice, true, [](int s) { return MakeOnCuda(OnCuda::kCaching, s); }},
      {"cuda_expandable", Family::kDevice, true,
       [](int s) { return MakeOnCuda(OnCuda::kExpandable, s); }},
      {"cuda_size_class", Family::kDevice, true,
       [](int s) { return MakeOnCuda(OnCuda::kSizeClass, s); }},
      {"cudaMalloc", Family::kDevice, true,
       [](int s) { return MakeOnCuda(OnCuda::kCudaMalloc, s); }},
      {"cudaMallocAsync", Family::kDevice, true,
       [](int s) { return MakeOnCuda(OnCuda::kCudaMallocAsync, s); }},
  };
  return *kAll;
}

absl::StatusOr<std::unique_ptr<BenchAllocator>> MakeTrackedCaching(int streams) {
  return MakeOurs(Ours::kTrackedCaching, false, streams);
}

void EnsureStaticTlsForDlopen(int /*argc*/, char** argv) {
  constexpr const char* kMarker = "GPUALLOC_BENCH_TLS";
  if (std::getenv(kMarker) != nullptr) return;
  std::string tunables = "glibc.rtld.optional_static_tls=262144";
  if (const char* existing = std::getenv("GLIBC_TUNABLES")) {
    tunables = absl::StrCat(existing, ":", tunables);
  }
  setenv("GLIBC_TUNABLES", tunables.c_str(), 1);
  setenv(kMarker, "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on; jemalloc will report that it cannot be loaded.
}

}  // namespace gpualloc::bench
