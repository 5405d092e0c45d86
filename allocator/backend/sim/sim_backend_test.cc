#include "allocator/backend/sim/sim_backend.h"

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "allocator/backend/testing/backend_contract.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

SimOptions TwoSmallDevices() { return SimOptions::WithDevices(2, 64 << 20); }

INSTANTIATE_TEST_SUITE_P(Sim, BackendContract,
                         ::testing::Values(BackendFactory{
                             "sim", [] { return std::make_unique<SimBackend>(TwoSmallDevices()); }}));

TEST(SimBackend, AccountingReturnsToZeroAfterEverythingIsFreed) {
  SimBackend sim(TwoSmallDevices());
  auto a = sim.Malloc(0, 1000);
  auto b = sim.Malloc(1, 3000);
  auto h = sim.HostAlloc(1, 100);
  ASSERT_TRUE(a.ok() && b.ok() && h.ok());
  SimAccounting mid = sim.Accounting();
  EXPECT_EQ(mid.devices[0].device_bytes, 1024u) << "rounded to the 512-byte granularity";
  EXPECT_EQ(mid.devices[1].device_bytes, 3072u);
  EXPECT_EQ(mid.devices[1].pinned_bytes, 256u);
  EXPECT_EQ(mid.calls_to(BackendOp::kMalloc), 2u);
  EXPECT_FALSE(mid.AllReleased());
  ASSERT_TRUE(sim.Free(0, *a).ok());
  ASSERT_TRUE(sim.Free(1, *b).ok());
  ASSERT_TRUE(sim.HostFree(1, *h).ok());
  SimAccounting end = sim.Accounting();
  EXPECT_TRUE(end.AllReleased()) << end.Describe();
  EXPECT_EQ(end.devices[1].peak_device_bytes, 3072u);
}

TEST(SimBackend, CapacityAndFragmentationProduceOutOfMemory) {
  SimOptions o = SimOptions::WithDevices(1, 4096);
  SimBackend sim(o);
  std::vector<void*> p;
  for (int i = 0; i < 8; ++i) p.push_back(sim.Malloc(0, 512).value());
  auto full = sim.Malloc(0, 512);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("simErrorMemoryAllocation"), absl::string_view::npos);
  // Free every other block: 2 KiB free in total, but no 1 KiB contiguous range.
  for (int i = 0; i < 8; i += 2) ASSERT_TRUE(sim.Free(0, p[i]).ok());
  auto frag = sim.Malloc(0, 1024);
  EXPECT_EQ(frag.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(frag.status().message().find("largest contiguous free range 512"),
            absl::string_view::npos)
      << frag.status();
  for (int i = 1; i < 8; i += 2) ASSERT_TRUE(sim.Free(0, p[i]).ok());
  EXPECT_TRUE(sim.Malloc(0, 4096).ok());
}

TEST(SimBackend, DoubleFreeForeignPointerAndWrongDeviceAreRejected) {
  SimBackend sim(TwoSmallDevices());
  void* p = sim.Malloc(0, 256).value();
  EXPECT_EQ(sim.Free(1, p).code(), absl::StatusCode::kInvalidArgument) << "wrong device";
  EXPECT_TRUE(sim.Free(0, p).ok());
  absl::Status twice = sim.Free(0, p);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.message().find("already freed"), absl::string_view::npos);
  int on_stack = 0;
  EXPECT_FALSE(sim.Free(0, &on_stack).ok());
  void* q = sim.Malloc(0, 1024).value();
  EXPECT_FALSE(sim.Free(0, static_cast<char*>(q) + 256).ok()) << "interior pointer";
  void* h = sim.HostAlloc(0, 64).value();
  EXPECT_FALSE(sim.Free(0, h).ok()) << "pinned memory through Free";
  EXPECT_FALSE(sim.HostFree(1, h).ok()) << "pinned memory freed for a non-owner device";
  EXPECT_FALSE(sim.HostFree(0, q).ok()) << "device memory through HostFree";
  EXPECT_TRUE(sim.HostFree(0, h).ok());
  EXPECT_TRUE(sim.Free(0, q).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased());
}

TEST(SimBackend, ZeroAndOverflowingSizesAreRejected) {
  SimBackend sim(TwoSmallDevices());
  EXPECT_EQ(sim.Malloc(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim.Malloc(0, ~std::size_t{0} - 3).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(sim.HostAlloc(0, 0).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased());
}

#if !defined(__SANITIZE_ADDRESS__)
// Under ASan the overrun is reported at the write itself (the guards are
// poisoned), which is stronger; this test covers the default build.
TEST(SimBackend, OverrunIsDetectedByGuardBytesAtFree) {
  SimBackend sim(TwoSmallDevices());
  auto* p = static_cast<unsigned char*>(sim.Malloc(0, 1000).value());
  p[1000] = 0;  // one byte past the end
  absl::Status st = sim.Free(0, p);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("overrun"), absl::string_view::npos);
  EXPECT_EQ(sim.Accounting().guard_violations, 1u);
  EXPECT_TRUE(sim.Accounting().AllReleased()) << "the memory is still returned";
}
#endif

TEST(SimBackend, CopyDirectionAndBoundsAreChecked) {
  SimBackend sim(TwoSmallDevices());
  void* d = sim.Malloc(0, 1024).value();
  std::vector<char> host(2048);
  EXPECT_EQ(sim.Memcpy(d, host.data(), 1024, CopyKind::kDeviceToHost).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim.Memcpy(host.data(), d, 1024, CopyKind::kHostToDevice).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim.Memcpy(d, host.data(), 2048, CopyKind::kHostToDevice).code(),
            absl::StatusCode::kInvalidArgument)
      << "copy past the end of the allocation";
  EXPECT_FALSE(sim.Memcpy(nullptr, d, 16, CopyKind::kDeviceToHost).ok());
  EXPECT_FALSE(sim.Memset(host.data(), 0, 16).ok()) << "memset of host memory";
  EXPECT_TRUE(sim.Memcpy(d, host.data(), 1024, CopyKind::kHostToDevice).ok());
  EXPECT_TRUE(sim.Free(0, d).ok());
}

TEST(SimBackend, StreamsRunAsynchronouslyAndInOrder) {
  SimOptions o = TwoSmallDevices();
  o.cost.copy_ns_per_kib = 20'000;  // 1 MiB copy ~ 20 ms
  SimBackend sim(o);
  Stream s = sim.CreateStream(0).value();
  Event e = sim.CreateEvent(0).value();
  const std::size_t n = 1 << 20;
  void* d = sim.Malloc(0, n).value();
  std::vector<char> host(n, 1);
  ASSERT_TRUE(sim.MemcpyAsync(d, host.data(), n, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(sim.RecordEvent(e, s).ok());
  EXPECT_FALSE(sim.QueryEvent(e).value()) << "the copy is still running";
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  EXPECT_TRUE(sim.QueryEvent(e).value());
  EXPECT_TRUE(sim.DestroyEvent(e).ok());
  EXPECT_TRUE(sim.DestroyStream(s).ok());
  EXPECT_TRUE(sim.Free(0, d).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased());
}

TEST(SimBackend, StreamWaitEventOrdersWorkAcrossStreams) {
  SimOptions o = TwoSmallDevices();
  o.cost.copy_ns_per_kib = 10'000;
  SimBackend sim(o);
  Stream producer = sim.CreateStream(0).value();
  Stream consumer = sim.CreateStream(0).value();
  Event ready = sim.CreateEvent(0).value();
  const std::size_t n = 256 * 1024;
  void* d = sim.Malloc(0, n).value();
  std::vector<unsigned char> src(n, 0xAB), dst(n, 0);
  ASSERT_TRUE(sim.MemcpyAsync(d, src.data(), n, CopyKind::kHostToDevice, producer).ok());
  ASSERT_TRUE(sim.RecordEvent(ready, producer).ok());
  ASSERT_TRUE(sim.StreamWaitEvent(consumer, ready).ok());
  ASSERT_TRUE(sim.MemcpyAsync(dst.data(), d, n, CopyKind::kDeviceToHost, consumer).ok());
  ASSERT_TRUE(sim.SynchronizeStream(consumer).ok());
  EXPECT_EQ(dst, src) << "the consumer's copy ran after the producer's";
  ASSERT_TRUE(sim.DestroyEvent(ready).ok());
  ASSERT_TRUE(sim.DestroyStream(producer).ok());
  ASSERT_TRUE(sim.DestroyStream(consumer).ok());
  ASSERT_TRUE(sim.Free(0, d).ok());
}

TEST(SimBackend, FreeAsyncReturnsMemoryOnlyWhenTheStreamPassesTheFree) {
  SimOptions o = SimOptions::WithDevices(1, 2 << 20);
  o.cost.copy_ns_per_kib = 50'000;
  SimBackend sim(o);
  Stream s = sim.CreateStream(0).value();
  void* p = sim.MallocAsync(1 << 20, s).value();
  std::vector<char> host(1 << 20);
  ASSERT_TRUE(sim.MemcpyAsync(host.data(), p, 1 << 20, CopyKind::kDeviceToHost, s).ok());
  ASSERT_TRUE(sim.FreeAsync(p, s).ok());
  EXPECT_FALSE(sim.FreeAsync(p, s).ok()) << "double stream-ordered free";
  EXPECT_EQ(sim.Accounting().devices[0].device_bytes, std::size_t{1} << 20)
      << "still owned by the stream";
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  EXPECT_EQ(sim.Accounting().devices[0].device_bytes, 0u);
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased());
}

TEST(SimBackend, VirtualMemoryIsInaccessibleUntilSetAccessAndReleasesCleanly) {
  SimBackend sim(TwoSmallDevices());
  const std::size_t g = sim.GetDeviceProperties(0)->vm_granularity;
  std::uintptr_t va = sim.VmReserve(0, 2 * g).value();
  PhysicalChunk c = sim.VmCreate(0, g).value();
  EXPECT_EQ(sim.Accounting().devices[0].vm_physical_bytes, g);
  ASSERT_TRUE(sim.VmMap(va, c).ok());
  std::vector<char> buf(g);
  EXPECT_FALSE(sim.Memcpy(reinterpret_cast<void*>(va), buf.data(), g,
                          CopyKind::kHostToDevice).ok())
      << "mapped but no access yet";
  EXPECT_FALSE(sim.VmMap(va, c).ok()) << "overlapping mapping";
  EXPECT_FALSE(sim.VmRelease(va, 2 * g).ok()) << "release while mapped";
  ASSERT_TRUE(sim.VmSetAccess(va, g, 0).ok());
  std::memset(reinterpret_cast<void*>(va), 0x33, g);  // plain host access works now
  // Release the physical handle while mapped: freed at unmap, as in CUDA.
  ASSERT_TRUE(sim.VmReleasePhysical(c).ok());
  EXPECT_EQ(sim.Accounting().devices[0].vm_physical_bytes, g);
  ASSERT_TRUE(sim.VmUnmap(va, g).ok());
  EXPECT_EQ(sim.Accounting().devices[0].vm_physical_bytes, 0u);
  ASSERT_TRUE(sim.VmRelease(va, 2 * g).ok());
  EXPECT_FALSE(sim.VmReserve(0, g + 1).ok()) << "not a granularity multiple";
  EXPECT_TRUE(sim.Accounting().AllReleased()) << sim.Accounting().Describe();
}

TEST(SimBackend, PhysicalChunksCountAgainstCapacity) {
  SimOptions o = SimOptions::WithDevices(1, 4 << 20);
  SimBackend sim(o);
  PhysicalChunk a = sim.VmCreate(0, 2 << 20).value();
  PhysicalChunk b = sim.VmCreate(0, 2 << 20).value();
  EXPECT_EQ(sim.VmCreate(0, 2 << 20).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sim.Malloc(0, 512).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(sim.VmReleasePhysical(a).ok());
  ASSERT_TRUE(sim.VmReleasePhysical(b).ok());
  EXPECT_FALSE(sim.VmReleasePhysical(b).ok()) << "double release";
}

TEST(SimBackend, ManagedMemoryCountsPageMigrations) {
  SimOptions o = TwoSmallDevices();
  SimBackend sim(o);
  const std::size_t page = o.managed_page_bytes;
  void* m = sim.MallocManaged(0, 4 * page).value();
  std::memset(m, 1, 4 * page);  // host-accessible
  ASSERT_TRUE(sim.Prefetch(m, 4 * page, 0, Stream::Default(0)).ok());
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  EXPECT_EQ(sim.Accounting().devices[0].page_migrations, 4u);
  ASSERT_TRUE(sim.Prefetch(m, page, 0, Stream::Default(0)).ok());  // already there
  ASSERT_TRUE(sim.Prefetch(m, page, kHostDevice, Stream::Default(0)).ok());
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  EXPECT_EQ(sim.Accounting().devices[0].page_migrations, 5u);
  EXPECT_FALSE(sim.Prefetch(m, 5 * page, 0, Stream::Default(0)).ok()) << "past the end";
  ASSERT_TRUE(sim.Free(0, m).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased());
}

TEST(SimBackend, CostModelAddsLatencyPerCall) {
  SimOptions o = TwoSmallDevices();
  o.cost.malloc_ns = 2'000'000;  // 2 ms
  SimBackend sim(o);
  const auto start = std::chrono::steady_clock::now();
  void* p = sim.Malloc(0, 256).value();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, std::chrono::milliseconds(2));
  ASSERT_TRUE(sim.Free(0, p).ok());
}

TEST(SimBackend, UnknownStreamsAndEventsAreRejected) {
  SimBackend sim(TwoSmallDevices());
  EXPECT_FALSE(sim.SynchronizeStream(Stream{12345, 0}).ok());
  EXPECT_FALSE(sim.QueryEvent(Event{999, 0}).ok());
  Stream s = sim.CreateStream(0).value();
  EXPECT_FALSE(sim.SynchronizeStream(Stream{s.handle, 1}).ok()) << "stream of another device";
  Event e = sim.CreateEvent(1).value();
  EXPECT_FALSE(sim.RecordEvent(e, s).ok()) << "event and stream on different devices";
  EXPECT_TRUE(sim.QueryEvent(e).value()) << "an unrecorded event is complete";
  ASSERT_TRUE(sim.DestroyEvent(e).ok());
  EXPECT_FALSE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  EXPECT_FALSE(sim.DestroyStream(s).ok());
}

TEST(SimBackend, ConcurrentAllocationFromManyThreadsBalances) {
  SimBackend sim(TwoSmallDevices());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const DeviceIndex d = t % 2;
      if (!sim.SetDevice(d).ok()) ++failures;
      for (int i = 0; i < 200; ++i) {
        auto p = sim.Malloc(d, 256 + 64 * i);
        if (!p.ok() || !sim.Memset(*p, t, 256).ok() || !sim.Free(d, *p).ok()) ++failures;
        if (sim.GetDevice().value() != d) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(sim.Accounting().AllReleased());
  EXPECT_EQ(sim.Accounting().calls_to(BackendOp::kMalloc), 800u);
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
// A machine that refuses another thread (here: an address-space limit, which
// binds root too) makes CreateStream fail with a Status, never a throw.
// Runs in the death test's child: exits 0 when CreateStream reported the
// refused thread as ResourceExhausted naming simErrorOutOfResources.
[[noreturn]] void CreateStreamsUnderAnAddressSpaceLimit() {
  SimBackend sim(TwoSmallDevices());
  const rlimit limit{std::size_t{1} << 30, std::size_t{1} << 30};
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(3);
  std::vector<Stream> streams;
  for (int i = 0; i < 10000; ++i) {
    absl::StatusOr<Stream> s = sim.CreateStream(0);
    if (!s.ok()) {
      const bool named = s.status().code() == absl::StatusCode::kResourceExhausted &&
                         s.status().message().find("simErrorOutOfResources") !=
                             absl::string_view::npos;
      std::_Exit(named ? 0 : 4);
    }
    streams.push_back(*s);
  }
  std::_Exit(5);  // the limit never bit
}

TEST(SimBackendDeathTest, CreateStreamBeyondTheMachinesThreadsIsAnErrorNotACrash) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(CreateStreamsUnderAnAddressSpaceLimit(), ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace
}  // namespace gpualloc
