#include "allocator/backend/sim/sim_backend.h"

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
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

// The harness's leak verdicts rest on AllReleased and Describe: each kind of
// resource, held alone, must make the first false and be named by the second.
TEST(SimBackend, EachKindOfLiveResourceAloneIsReportedAsALeak) {
  struct Kind {
    const char* name;
    std::function<std::function<void()>(SimBackend&)> hold;  // returns the release
  };
  const std::vector<Kind> kinds = {
      {"device bytes", [](SimBackend& s) {
         void* p = s.Malloc(1, 4096).value();
         return std::function<void()>([&s, p] { ASSERT_TRUE(s.Free(1, p).ok()); });
       }},
      {"managed", [](SimBackend& s) {
         void* p = s.MallocManaged(1, 4096).value();
         return std::function<void()>([&s, p] { ASSERT_TRUE(s.Free(1, p).ok()); });
       }},
      {"pinned", [](SimBackend& s) {
         void* p = s.HostAlloc(1, 4096).value();
         return std::function<void()>([&s, p] { ASSERT_TRUE(s.HostFree(1, p).ok()); });
       }},
      {"VM reserved", [](SimBackend& s) {
         const std::uintptr_t a = s.VmReserve(1, 2 << 20).value();
         return std::function<void()>([&s, a] { ASSERT_TRUE(s.VmRelease(a, 2 << 20).ok()); });
       }},
      {"VM physical", [](SimBackend& s) {
         const PhysicalChunk c = s.VmCreate(1, 2 << 20).value();
         return std::function<void()>([&s, c] { ASSERT_TRUE(s.VmReleasePhysical(c).ok()); });
       }},
      {"streams", [](SimBackend& s) {
         const Stream st = s.CreateStream(1).value();
         return std::function<void()>([&s, st] { ASSERT_TRUE(s.DestroyStream(st).ok()); });
       }},
      {"events", [](SimBackend& s) {
         const Event e = s.CreateEvent(1).value();
         return std::function<void()>([&s, e] { ASSERT_TRUE(s.DestroyEvent(e).ok()); });
       }},
  };
  for (const Kind& kind : kinds) {
    SimBackend sim(TwoSmallDevices());
    std::function<void()> release = kind.hold(sim);
    SimAccounting held = sim.Accounting();
    EXPECT_FALSE(held.AllReleased()) << kind.name;
    EXPECT_NE(held.Describe().find(kind.name), std::string::npos) << kind.name << ": "
                                                                    << held.Describe();
    release();
    SimAccounting after = sim.Accounting();
    EXPECT_TRUE(after.AllReleased()) << kind.name << ": " << after.Describe();
    EXPECT_EQ(after.Describe(), "sim: nothing outstanding\n") << kind.name;
  }
}

// The benchmarks' and tests' "device calls" come from these counters: every
// call counts once, under its own op and no other.
TEST(SimBackend, EveryCallIsCountedOnceUnderItsOwnOp) {
  SimBackend sim(TwoSmallDevices());
  const Stream stream = sim.CreateStream(0).value();
  const Event event = sim.CreateEvent(0).value();
  void* device = sim.Malloc(0, 4096).value();
  void* managed = sim.MallocManaged(0, 4096).value();
  void* host = sim.HostAlloc(0, 4096).value();
  const std::uintptr_t va = sim.VmReserve(0, 2 << 20).value();
  const PhysicalChunk chunk = sim.VmCreate(0, 2 << 20).value();
  void* async = nullptr;
  const std::vector<std::pair<BackendOp, std::function<absl::Status()>>> calls = {
      {BackendOp::kDeviceCount, [&] { return sim.DeviceCount().status(); }},
      {BackendOp::kDeviceProperties, [&] { return sim.GetDeviceProperties(0).status(); }},
      {BackendOp::kMemoryInfo, [&] { return sim.GetMemoryInfo(0).status(); }},
      {BackendOp::kSetDevice, [&] { return sim.SetDevice(0); }},
      {BackendOp::kGetDevice, [&] { return sim.GetDevice().status(); }},
      {BackendOp::kMallocAsync, [&] {
         absl::StatusOr<void*> p = sim.MallocAsync(4096, stream);
         if (p.ok()) async = *p;
         return p.status();
       }},
      {BackendOp::kFreeAsync, [&] { return sim.FreeAsync(async, stream); }},
      {BackendOp::kPrefetch, [&] { return sim.Prefetch(managed, 4096, 0, stream); }},
      {BackendOp::kStreamSynchronize, [&] { return sim.SynchronizeStream(stream); }},
      {BackendOp::kStreamWaitEvent, [&] { return sim.StreamWaitEvent(stream, event); }},
      {BackendOp::kEventRecord, [&] { return sim.RecordEvent(event, stream); }},
      {BackendOp::kEventSynchronize, [&] { return sim.SynchronizeEvent(event); }},
      {BackendOp::kEventQuery, [&] { return sim.QueryEvent(event).status(); }},
      {BackendOp::kMemcpy, [&] { return sim.Memcpy(host, device, 64, CopyKind::kDeviceToHost); }},
      {BackendOp::kMemcpyAsync,
       [&] { return sim.MemcpyAsync(device, host, 64, CopyKind::kHostToDevice, stream); }},
      {BackendOp::kMemset, [&] { return sim.Memset(device, 1, 64); }},
      {BackendOp::kMemsetAsync, [&] { return sim.MemsetAsync(device, 2, 64, stream); }},
      {BackendOp::kDeviceSynchronize, [&] { return sim.DeviceSynchronize(0); }},
      {BackendOp::kVmMap, [&] { return sim.VmMap(va, chunk); }},
      {BackendOp::kVmSetAccess, [&] { return sim.VmSetAccess(va, 2 << 20, 0); }},
      {BackendOp::kVmUnmap, [&] { return sim.VmUnmap(va, 2 << 20); }},
      {BackendOp::kVmReleasePhysical, [&] { return sim.VmReleasePhysical(chunk); }},
      {BackendOp::kVmRelease, [&] { return sim.VmRelease(va, 2 << 20); }},
      {BackendOp::kFree, [&] { return sim.Free(0, device); }},
      {BackendOp::kFree, [&] { return sim.Free(0, managed); }},
      {BackendOp::kHostFree, [&] { return sim.HostFree(0, host); }},
      {BackendOp::kEventDestroy, [&] { return sim.DestroyEvent(event); }},
      {BackendOp::kStreamDestroy, [&] { return sim.DestroyStream(stream); }},
  };
  for (const auto& [op, call] : calls) {
    const SimAccounting before = sim.Accounting();
    const absl::Status st = call();
    ASSERT_TRUE(st.ok()) << static_cast<int>(op) << ": " << st;
    const SimAccounting after = sim.Accounting();
    for (int other = 0; other < kBackendOpCount; ++other) {
      const BackendOp o = static_cast<BackendOp>(other);
      EXPECT_EQ(after.calls_to(o) - before.calls_to(o), o == op ? 1u : 0u)
          << "op " << other << " after the call of op " << static_cast<int>(op);
    }
    // Unmeasured: the next call (a synchronous copy or fill of the same
    // bytes) must not race this one's queued work.
    if (op != BackendOp::kStreamDestroy) {
      ASSERT_TRUE(sim.SynchronizeStream(stream).ok());
    }
  }
  EXPECT_TRUE(sim.CheckStreamOrder().ok()) << sim.CheckStreamOrder();
  EXPECT_TRUE(sim.Accounting().AllReleased()) << sim.Accounting().Describe();
  const SimAccounting totals = sim.Accounting();
  for (BackendOp op : {BackendOp::kMalloc, BackendOp::kMallocManaged, BackendOp::kHostAlloc,
                       BackendOp::kVmReserve, BackendOp::kVmCreate, BackendOp::kStreamCreate,
                       BackendOp::kEventCreate}) {
    EXPECT_EQ(totals.calls_to(op), 1u) << static_cast<int>(op);
  }
}

// Each way a call can name memory it may not act on is refused, and the
// memory stays as it was.
TEST(SimBackend, CallsOnTheWrongKindOrRangeOfMemoryAreRefused) {
  SimBackend sim(TwoSmallDevices());
  const Stream stream = sim.CreateStream(0).value();
  void* device = sim.Malloc(0, 4096).value();
  void* managed = sim.MallocManaged(0, 4096).value();
  void* host = sim.HostAlloc(0, 4096).value();
  EXPECT_EQ(sim.FreeAsync(managed, stream).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim.FreeAsync(host, stream).code(), absl::StatusCode::kInvalidArgument);
  auto* m = static_cast<const unsigned char*>(managed);
  EXPECT_FALSE(sim.Prefetch(device, 64, 0, stream).ok()) << "not managed memory";
  EXPECT_FALSE(sim.Prefetch(m, 0, 0, stream).ok()) << "zero bytes";
  EXPECT_FALSE(sim.Prefetch(m + 64, 4096, 0, stream).ok()) << "runs past the allocation";
  EXPECT_FALSE(sim.Prefetch(m - 64, 64, 0, stream).ok()) << "starts before it";
  EXPECT_TRUE(sim.Prefetch(m + 64, 4032, 0, stream).ok()) << "exactly to its end";
  // A pointer at the very start of a block's guard is no host buffer.
  auto* guard_start = static_cast<unsigned char*>(device) - TwoSmallDevices().guard_bytes;
  EXPECT_FALSE(sim.Memcpy(device, guard_start, 64, CopyKind::kHostToDevice).ok());
  // A VM range only half mapped cannot be touched as a whole.
  const std::uintptr_t half = sim.VmReserve(0, 4 << 20).value();
  const PhysicalChunk chunk = sim.VmCreate(0, 2 << 20).value();
  ASSERT_TRUE(sim.VmMap(half, chunk).ok());
  ASSERT_TRUE(sim.VmSetAccess(half, 2 << 20, 0).ok());
  EXPECT_TRUE(sim.Memset(reinterpret_cast<void*>(half), 0, 2 << 20).ok());
  EXPECT_FALSE(sim.Memset(reinterpret_cast<void*>(half), 0, 4 << 20).ok()) << "past the mapping";
  // Nor can a range with a hole between two mappings.
  const std::uintptr_t holed = sim.VmReserve(0, 6 << 20).value();
  const PhysicalChunk low = sim.VmCreate(0, 2 << 20).value();
  const PhysicalChunk high = sim.VmCreate(0, 2 << 20).value();
  ASSERT_TRUE(sim.VmMap(holed, low).ok());
  ASSERT_TRUE(sim.VmMap(holed + (4 << 20), high).ok());
  ASSERT_TRUE(sim.VmSetAccess(holed, 2 << 20, 0).ok());
  ASSERT_TRUE(sim.VmSetAccess(holed + (4 << 20), 2 << 20, 0).ok());
  EXPECT_FALSE(sim.Memset(reinterpret_cast<void*>(holed), 0, 6 << 20).ok()) << "over the hole";
  EXPECT_FALSE(sim.Memset(reinterpret_cast<void*>(holed + (1 << 20)), 0, 2 << 20).ok());
  ASSERT_TRUE(sim.VmUnmap(holed, 2 << 20).ok());
  ASSERT_TRUE(sim.VmUnmap(holed + (4 << 20), 2 << 20).ok());
  ASSERT_TRUE(sim.VmReleasePhysical(low).ok());
  ASSERT_TRUE(sim.VmReleasePhysical(high).ok());
  ASSERT_TRUE(sim.VmRelease(holed, 6 << 20).ok());
  // A mapping may not overlap its neighbour, by so much as a byte.
  const PhysicalChunk second = sim.VmCreate(0, 2 << 20).value();
  EXPECT_FALSE(sim.VmMap(half + (2 << 20) - 1, second).ok()) << "overlaps the first by one byte";
  ASSERT_TRUE(sim.VmReleasePhysical(second).ok());
  ASSERT_TRUE(sim.VmUnmap(half, 2 << 20).ok());
  ASSERT_TRUE(sim.VmReleasePhysical(chunk).ok());
  ASSERT_TRUE(sim.VmRelease(half, 4 << 20).ok());
  const std::uintptr_t va = sim.VmReserve(0, 2 << 20).value();
  EXPECT_EQ(sim.VmRelease(va, 4 << 20).code(), absl::StatusCode::kInvalidArgument) << "wrong size";
  EXPECT_EQ(sim.VmRelease(va + 4096, 2 << 20).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(sim.VmRelease(va, 2 << 20).ok()) << "still reserved after the refusals";
  ASSERT_TRUE(sim.SynchronizeStream(stream).ok());
  EXPECT_TRUE(sim.Free(0, device).ok());
  EXPECT_TRUE(sim.Free(0, managed).ok());
  EXPECT_TRUE(sim.HostFree(0, host).ok());
  EXPECT_TRUE(sim.DestroyStream(stream).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased()) << sim.Accounting().Describe();
}

// A backend destroyed with memory still live says so and releases it: each
// kind alone (device memory, a VM reservation, a physical chunk).
TEST(SimBackend, DestructionWithLiveMemoryReportsAndReleasesEachKind) {
  for (int kind = 0; kind < 3; ++kind) {
    testing::internal::CaptureStderr();
    {
      SimBackend sim(TwoSmallDevices());
      const absl::Status held = kind == 0   ? sim.Malloc(1, 4096).status()
                                : kind == 1 ? sim.VmReserve(1, 2 << 20).status()
                                            : sim.VmCreate(1, 2 << 20).status();
      ASSERT_TRUE(held.ok()) << held;
    }
    const std::string said = testing::internal::GetCapturedStderr();
    EXPECT_NE(said.find("still live at destruction"), std::string::npos) << kind << ": " << said;
  }
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
  // Sizes whose rounding or guards would wrap: refused as overflowing, not
  // served as a tiny block.
  for (std::size_t absurd : {~std::size_t{0}, ~std::size_t{0} - 3, ~std::size_t{0} - 600}) {
    for (auto st : {sim.Malloc(0, absurd).status(), sim.HostAlloc(0, absurd).status(),
                    sim.MallocManaged(0, absurd).status()}) {
      EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << absurd;
      EXPECT_NE(st.message().find("overflows"), absl::string_view::npos) << st;
    }
  }
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

// Every guard byte is checked, the first and the last on each side, and the
// slack between the request and the rounded size too.
TEST(SimBackend, AWriteToAnyGuardByteIsAnOverrun) {
  SimOptions options = TwoSmallDevices();
  const std::size_t guard = options.guard_bytes;
  const std::size_t rounded = 1024;  // 1000 bytes at the 512-byte granularity
  for (std::ptrdiff_t offset : {std::ptrdiff_t{-1}, -static_cast<std::ptrdiff_t>(guard),
                                std::ptrdiff_t{1000}, std::ptrdiff_t{rounded - 1},
                                static_cast<std::ptrdiff_t>(rounded),
                                static_cast<std::ptrdiff_t>(rounded + guard - 1)}) {
    SimBackend sim(options);
    auto* p = static_cast<unsigned char*>(sim.Malloc(0, 1000).value());
    p[offset] = 0;
    const absl::Status st = sim.Free(0, p);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "offset " << offset;
    EXPECT_EQ(sim.Accounting().guard_violations, 1u) << "offset " << offset;
  }
  SimBackend sim(options);
  auto* p = static_cast<unsigned char*>(sim.Malloc(0, 1000).value());
  p[999] = 0;  // the last byte of the request is the caller's
  EXPECT_TRUE(sim.Free(0, p).ok());
  EXPECT_EQ(sim.Accounting().guard_violations, 0u);
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
  // Device to device: either side running past its allocation is refused.
  void* big = sim.Malloc(0, 4096).value();
  EXPECT_EQ(sim.Memcpy(d, big, 2048, CopyKind::kDeviceToDevice).code(),
            absl::StatusCode::kInvalidArgument) << "destination too small";
  EXPECT_EQ(sim.Memcpy(big, d, 2048, CopyKind::kDeviceToDevice).code(),
            absl::StatusCode::kInvalidArgument) << "source too small";
  EXPECT_TRUE(sim.Memcpy(big, d, 1024, CopyKind::kDeviceToDevice).ok());
  EXPECT_TRUE(sim.Free(0, big).ok());
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

// Each priced call waits at least its price (a lower bound: sleeping never
// makes a call faster, so this holds on any machine).
TEST(SimBackend, CostModelAddsLatencyPerCall) {
  using Clock = std::chrono::steady_clock;
  struct Priced {
    const char* call;
    std::int64_t SimCostModel::*price;
    std::function<void(SimBackend&, Stream)> run;
  };
  const std::vector<Priced> priced = {
      {"Malloc", &SimCostModel::malloc_ns,
       [](SimBackend& s, Stream) { EXPECT_TRUE(s.Free(0, s.Malloc(0, 256).value()).ok()); }},
      {"MallocManaged", &SimCostModel::malloc_ns,
       [](SimBackend& s, Stream) { EXPECT_TRUE(s.Free(0, s.MallocManaged(0, 256).value()).ok()); }},
      {"MallocAsync", &SimCostModel::malloc_ns, [](SimBackend& s, Stream st) {
         EXPECT_TRUE(s.FreeAsync(s.MallocAsync(256, st).value(), st).ok());
       }},
      {"VmCreate", &SimCostModel::malloc_ns, [](SimBackend& s, Stream) {
         EXPECT_TRUE(s.VmReleasePhysical(s.VmCreate(0, 2 << 20).value()).ok());
       }},
      {"Free", &SimCostModel::free_ns, [](SimBackend& s, Stream) {
         void* p = s.Malloc(0, 256).value();
         EXPECT_TRUE(s.Free(0, p).ok());
       }},
      {"HostAlloc", &SimCostModel::host_alloc_ns,
       [](SimBackend& s, Stream) { EXPECT_TRUE(s.HostFree(0, s.HostAlloc(0, 256).value()).ok()); }},
      {"HostFree", &SimCostModel::host_free_ns,
       [](SimBackend& s, Stream) { EXPECT_TRUE(s.HostFree(0, s.HostAlloc(0, 256).value()).ok()); }},
      {"SynchronizeStream", &SimCostModel::synchronize_ns,
       [](SimBackend& s, Stream st) { EXPECT_TRUE(s.SynchronizeStream(st).ok()); }},
      {"DeviceSynchronize", &SimCostModel::synchronize_ns,
       [](SimBackend& s, Stream) { EXPECT_TRUE(s.DeviceSynchronize(0).ok()); }},
      {"RecordEvent", &SimCostModel::event_ns, [](SimBackend& s, Stream st) {
         const Event e = s.CreateEvent(0).value();
         EXPECT_TRUE(s.RecordEvent(e, st).ok());
         EXPECT_TRUE(s.SynchronizeEvent(e).ok());
         EXPECT_TRUE(s.DestroyEvent(e).ok());
       }},
  };
  for (const Priced& p : priced) {
    SimOptions o = TwoSmallDevices();
    o.cost.*p.price = 2'000'000;  // 2 ms on this call's price alone
    SimBackend sim(o);
    const Stream stream = sim.CreateStream(0).value();
    const auto start = Clock::now();
    p.run(sim, stream);
    EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(2)) << p.call;
    EXPECT_TRUE(sim.DestroyStream(stream).ok());
  }
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

// Host accesses noted (for the stream-order checker) on one thread while
// others allocate and free pinned memory: the lookup of the accessed block
// must read the allocation table under its lock. (A dropped lock there was
// caught by TSan only in runs that happened to interleave; this makes them.)
TEST(SimBackend, HostAccessesNotedWhileOtherThreadsAllocateRaceNothing) {
  SimBackend sim(TwoSmallDevices());
  void* mine = sim.HostAlloc(0, 64 << 10).value();
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t) {
    churn.emplace_back([&] {
      while (!done.load()) {
        absl::StatusOr<void*> p = sim.HostAlloc(0, 4096);
        if (!p.ok() || !sim.HostFree(0, *p).ok()) ++failures;
      }
    });
  }
  for (int i = 0; i < 3000; ++i) {
    const AccessMode mode = i % 2 == 0 ? AccessMode::kWrite : AccessMode::kRead;
    if (!sim.NoteHostAccess(static_cast<char*>(mine) + (i % 16) * 4096, 4096, mode).ok()) {
      ++failures;
    }
  }
  done = true;
  for (auto& th : churn) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(sim.HostFree(0, mine).ok());
  EXPECT_TRUE(sim.Accounting().AllReleased()) << sim.Accounting().Describe();
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

// Expandable segments grow and shrink from many threads at once: reserving,
// mapping, granting access, touching, unmapping and releasing concurrently
// must keep the sim's tables exact (and TSan quiet).
TEST(SimBackend, ConcurrentVirtualMemoryFromManyThreadsBalances) {
  SimBackend sim(SimOptions::WithDevices(1, 256 << 20));
  constexpr std::size_t kChunk = 2 << 20;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 40; ++i) {
        absl::StatusOr<std::uintptr_t> va = sim.VmReserve(0, 2 * kChunk);
        absl::StatusOr<PhysicalChunk> a = sim.VmCreate(0, kChunk);
        absl::StatusOr<PhysicalChunk> b = sim.VmCreate(0, kChunk);
        if (!va.ok() || !a.ok() || !b.ok() || !sim.VmMap(*va, *a).ok() ||
            !sim.VmMap(*va + kChunk, *b).ok() || !sim.VmSetAccess(*va, 2 * kChunk, 0).ok() ||
            !sim.Memset(reinterpret_cast<void*>(*va), i, 2 * kChunk).ok() ||
            !sim.VmUnmap(*va, 2 * kChunk).ok() || !sim.VmReleasePhysical(*a).ok() ||
            !sim.VmReleasePhysical(*b).ok() || !sim.VmRelease(*va, 2 * kChunk).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(sim.Accounting().AllReleased()) << sim.Accounting().Describe();
}

TEST(SimBackendDeathTest, CreateStreamBeyondTheMachinesThreadsIsAnErrorNotACrash) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(CreateStreamsUnderAnAddressSpaceLimit(), ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace
}  // namespace gpualloc

namespace gpualloc {
namespace {

// An empty access (no bytes, or no pointer) touches nothing: it is no error,
// whatever the pointer; and with the checker off nothing is checked at all.
TEST(SimBackend, EmptyHostAccessesAreNoErrorAndNothingIsCheckedWithTheCheckerOff) {
  int on_stack = 0;
  SimBackend sim(SimOptions::WithDevices(1, 1 << 20));
  EXPECT_TRUE(sim.NoteHostAccess(&on_stack, 0, AccessMode::kWrite).ok());
  EXPECT_TRUE(sim.NoteHostAccess(nullptr, 64, AccessMode::kRead).ok());
  EXPECT_EQ(sim.NoteHostAccess(&on_stack, sizeof(on_stack), AccessMode::kWrite).code(),
            absl::StatusCode::kInvalidArgument)
      << "not pinned or managed memory";
  SimOptions off = SimOptions::WithDevices(1, 1 << 20);
  off.check_stream_order = false;
  SimBackend unchecked(off);
  EXPECT_TRUE(unchecked.NoteHostAccess(&on_stack, sizeof(on_stack), AccessMode::kWrite).ok());
}

}  // namespace
}  // namespace gpualloc
