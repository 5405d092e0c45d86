// The stream-order checker, through the sim's public API: each unordered
// pattern a GPU program (or an allocator) can produce is reported naming
// both accesses, and each correct ordering (same stream, event + wait, host
// synchronisation, transitivity) is silent. Verdicts are logical, so none of
// these depends on how fast the simulated streams run. Where a test makes an
// unordered access on purpose, it holds the later stream (HoldStream) until
// the earlier work is done, so the access is reported without really racing
// (and TSan, which sees the gate, has nothing to report).
#include "allocator/backend/sim/stream_order_checker.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/backend/sim/sim_backend.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

using ::testing::HasSubstr;

constexpr std::size_t kBytes = 4096;

SimOptions Options() { return SimOptions::WithDevices(2, 64 << 20); }

// A sim whose copies take ~1 ms per 16 KiB, so work is still queued when the
// next call comes (not needed for verdicts, which are logical).
SimOptions SlowOptions() {
  SimOptions o = Options();
  o.cost.copy_ns_per_kib = 62'500;
  return o;
}

std::uint64_t Violations(const SimBackend& sim) {
  return sim.Accounting().stream_order.violations;
}

std::string Report(const SimBackend& sim) { return sim.stream_order()->Report(); }

TEST(StreamOrderChecker, IsOnByDefaultAndCanBeSwitchedOff) {
  SimBackend on(Options());
  EXPECT_NE(on.stream_order(), nullptr);
  SimOptions o = Options();
  o.check_stream_order = false;
  SimBackend off(o);
  EXPECT_EQ(off.stream_order(), nullptr);
  EXPECT_TRUE(off.CheckStreamOrder().ok());
}

// Fresh memory forgets its history exactly over its own range: a range that
// starts or ends inside an older access keeps the rest of that access.
TEST(StreamOrderChecker, ForgettingPartOfAnAccessKeepsTheRest) {
  for (int tail = 0; tail < 2; ++tail) {
    StreamOrderChecker checker(StreamOrderChecker::Options{});
    const int a = checker.ActorFor(Stream{0x100, 0});
    const int b = checker.ActorFor(Stream{0x200, 0});
    const std::uintptr_t base = 0x10000;
    const RangeAccess whole{base, 300, AccessMode::kWrite, {}};
    checker.Enqueue(a, {&whole, 1}, "a writes [0, 300)");
    // Forget the middle third; then b writes it (fresh: fine), and the end
    // (tail=1) or the start (tail=0), which a's write still covers.
    checker.Forget(base + 100, 100);
    const RangeAccess middle{base + 100, 100, AccessMode::kWrite, {}};
    checker.Enqueue(b, {&middle, 1}, "b writes the forgotten middle");
    EXPECT_EQ(checker.stats().violations, 0u) << "tail " << tail;
    const RangeAccess kept{tail ? base + 200 : base, 100, AccessMode::kWrite, {}};
    checker.Enqueue(b, {&kept, 1}, "b writes a part still remembered");
    EXPECT_EQ(checker.stats().violations, 1u) << "tail " << tail;
  }
}

TEST(StreamOrderChecker, TwoStreamsWritingWithoutOrderAreReportedNamingBoth) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  SimStreamGate gate = sim.HoldStream(t).value();
  ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes, s).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 2, kBytes, t).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  gate.Open();
  EXPECT_EQ(Violations(sim), 1u);
  const std::vector<StreamOrderViolation> v = sim.stream_order()->Violations();
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].kind, StreamOrderViolation::Kind::kUnorderedAccess);
  const std::string text = v[0].ToString();
  EXPECT_THAT(text, HasSubstr(absl::StrFormat("stream %d of device 0", s.handle)));
  EXPECT_THAT(text, HasSubstr(absl::StrFormat("stream %d of device 0", t.handle)));
  EXPECT_THAT(text, HasSubstr("memset_async"));
  EXPECT_THAT(text, HasSubstr("device allocation"));
  EXPECT_EQ(v[0].begin, reinterpret_cast<std::uintptr_t>(p));
  EXPECT_EQ(v[0].end, reinterpret_cast<std::uintptr_t>(p) + kBytes);
  absl::Status st = sim.CheckStreamOrder();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()), HasSubstr("memset_async"));
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, AnEventAndAStreamWaitOrderTheSecondStream) {
  SimBackend sim(SlowOptions());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  const Event e = sim.CreateEvent(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  std::vector<unsigned char> host(kBytes, 7);
  ASSERT_TRUE(sim.MemcpyAsync(p, host.data(), kBytes, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(sim.RecordEvent(e, s).ok());
  ASSERT_TRUE(sim.StreamWaitEvent(t, e).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 2, kBytes, t).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  // An event recorded before the write does not order it.
  const Event early = sim.CreateEvent(0).value();
  ASSERT_TRUE(sim.RecordEvent(early, t).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 3, kBytes, t).ok());
  SimStreamGate gate = sim.HoldStream(s).value();
  ASSERT_TRUE(sim.StreamWaitEvent(s, early).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 4, kBytes, s).ok());
  ASSERT_TRUE(sim.SynchronizeStream(t).ok());
  gate.Open();
  EXPECT_EQ(Violations(sim), 1u) << "the second memset on t is after the event s waited for";
  ASSERT_TRUE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.DestroyEvent(early).ok());
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, OrderIsTransitiveThroughAChainOfEvents) {
  SimBackend sim(Options());
  const Stream a = sim.CreateStream(0).value();
  const Stream b = sim.CreateStream(0).value();
  const Stream c = sim.CreateStream(0).value();
  const Event ab = sim.CreateEvent(0).value();
  const Event bc = sim.CreateEvent(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes, a).ok());
  ASSERT_TRUE(sim.RecordEvent(ab, a).ok());
  ASSERT_TRUE(sim.StreamWaitEvent(b, ab).ok());
  ASSERT_TRUE(sim.RecordEvent(bc, b).ok());
  ASSERT_TRUE(sim.StreamWaitEvent(c, bc).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 2, kBytes, c).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  for (Event e : {ab, bc}) ASSERT_TRUE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.Free(0, p).ok());
  for (Stream s : {a, b, c}) ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderChecker, AHostSynchronisationOrdersLaterWorkOnAnyStream) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  // Stream synchronise.
  ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes, s).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 2, kBytes, t).ok());
  // Event synchronise.
  const Event e = sim.CreateEvent(0).value();
  ASSERT_TRUE(sim.RecordEvent(e, t).ok());
  ASSERT_TRUE(sim.SynchronizeEvent(e).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 3, kBytes, s).ok());
  // Device synchronise.
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 4, kBytes, t).ok());
  // An event query that answers "complete".
  ASSERT_TRUE(sim.RecordEvent(e, t).ok());
  while (!sim.QueryEvent(e).value()) {
  }
  ASSERT_TRUE(sim.MemsetAsync(p, 5, kBytes, s).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  // A synchronisation of the wrong stream orders nothing.
  ASSERT_TRUE(sim.SynchronizeStream(t).ok());
  SimStreamGate gate = sim.HoldStream(t).value();
  ASSERT_TRUE(sim.MemsetAsync(p, 6, kBytes, t).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  gate.Open();
  EXPECT_EQ(Violations(sim), 1u) << "s's memset was never waited for";
  ASSERT_TRUE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, ConcurrentReadsAreFineButAWriteAfterThemIsNot) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  void* q = sim.Malloc(0, kBytes).value();
  void* r = sim.Malloc(0, kBytes).value();
  ASSERT_TRUE(sim.Memset(p, 1, kBytes).ok());  // synchronous: ordered before everything
  ASSERT_TRUE(sim.MemcpyAsync(q, p, kBytes, CopyKind::kDeviceToDevice, s).ok());
  ASSERT_TRUE(sim.MemcpyAsync(r, p, kBytes, CopyKind::kDeviceToDevice, t).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  SimStreamGate gate = sim.HoldStream(s).value();
  ASSERT_TRUE(sim.MemsetAsync(p, 2, kBytes, s).ok());  // t's read of p is not ordered before
  ASSERT_TRUE(sim.SynchronizeStream(t).ok());
  gate.Open();
  ASSERT_EQ(Violations(sim), 1u);
  EXPECT_THAT(Report(sim), HasSubstr("read by stream"));
  for (void* x : {p, q, r}) ASSERT_TRUE(sim.Free(0, x).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, OnlyTheOverlappingBytesConflict) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  auto* p = static_cast<unsigned char*>(sim.Malloc(0, kBytes).value());
  ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes / 2, s).ok());
  ASSERT_TRUE(sim.MemsetAsync(p + kBytes / 2, 2, kBytes / 2, t).ok());
  EXPECT_EQ(Violations(sim), 0u) << "disjoint halves";
  SimStreamGate gate = sim.HoldStream(t).value();
  ASSERT_TRUE(sim.MemsetAsync(p + kBytes / 2 - 256, 3, 512, t).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  gate.Open();
  ASSERT_EQ(Violations(sim), 1u);
  const StreamOrderViolation v = sim.stream_order()->Violations()[0];
  EXPECT_EQ(v.begin, reinterpret_cast<std::uintptr_t>(p) + kBytes / 2 - 256);
  EXPECT_EQ(v.end, reinterpret_cast<std::uintptr_t>(p) + kBytes / 2);
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, FreeAsyncWithAnotherStreamsWorkUnorderedIsReported) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  void* p = sim.MallocAsync(kBytes, s).value();
  // t's memset stays queued until the free has happened on s: which one the
  // workers run first is then not left to the machine's timing.
  SimStreamGate gate = sim.HoldStream(t).value();
  ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes, t).ok());
  ASSERT_TRUE(sim.FreeAsync(p, s).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  ASSERT_EQ(Violations(sim), 1u) << Report(sim);
  EXPECT_THAT(Report(sim), HasSubstr("free_async"));
  EXPECT_THAT(Report(sim), HasSubstr("releases"));
  gate.Open();
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  // t's memset ran after the memory went back: it was skipped and reported too.
  EXPECT_EQ(Violations(sim), 2u) << Report(sim);
  const std::uint64_t before = Violations(sim);
  // The same pattern with the free ordered after t's work is fine.
  void* q = sim.MallocAsync(kBytes, s).value();
  const Event e = sim.CreateEvent(0).value();
  ASSERT_TRUE(sim.MemsetAsync(q, 1, kBytes, t).ok());
  ASSERT_TRUE(sim.RecordEvent(e, t).ok());
  ASSERT_TRUE(sim.StreamWaitEvent(s, e).ok());
  ASSERT_TRUE(sim.FreeAsync(q, s).ok());
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  EXPECT_EQ(Violations(sim), before) << Report(sim);
  ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(StreamOrderChecker, CudaFreeWaitsForTheDeviceSoItIsNeverAViolation) {
  SimBackend sim(SlowOptions());
  const Stream s = sim.CreateStream(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  std::vector<unsigned char> host(kBytes, 1);
  ASSERT_TRUE(sim.MemcpyAsync(p, host.data(), kBytes, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(sim.Free(0, p).ok());
  // Fresh memory at the same address carries nothing of the old.
  void* q = sim.Malloc(0, kBytes).value();
  ASSERT_TRUE(sim.MemsetAsync(q, 2, kBytes, sim.CreateStream(0).value()).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  ASSERT_TRUE(sim.Free(0, q).ok());
}

TEST(StreamOrderChecker, UnmappingWithWorkQueuedIsReportedAndTheWorkIsSkippedNotCrashed) {
  SimOptions o = SlowOptions();
  SimBackend sim(o);
  const std::size_t gran = o.devices[0].vm_granularity;
  const Stream s = sim.CreateStream(0).value();
  const std::uintptr_t base = sim.VmReserve(0, gran).value();
  const PhysicalChunk chunk = sim.VmCreate(0, gran).value();
  ASSERT_TRUE(sim.VmMap(base, chunk).ok());
  ASSERT_TRUE(sim.VmSetAccess(base, gran, 0).ok());
  auto* p = reinterpret_cast<void*>(base);
  // A long copy ahead keeps the memset queued while the range goes away.
  std::vector<unsigned char> host(gran, 1);
  void* other = sim.Malloc(0, gran).value();
  ASSERT_TRUE(sim.MemcpyAsync(other, host.data(), gran, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 7, gran, s).ok());
  ASSERT_TRUE(sim.VmUnmap(base, gran).ok());
  ASSERT_GE(Violations(sim), 1u);
  EXPECT_THAT(Report(sim), HasSubstr("vm_unmap"));
  EXPECT_THAT(Report(sim), HasSubstr("memset_async"));
  EXPECT_THAT(Report(sim), HasSubstr("virtual allocation"));
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());  // the memset ran (skipped), the process lives
  EXPECT_THAT(Report(sim), HasSubstr("after that memory was freed or unmapped"));
  ASSERT_TRUE(sim.VmReleasePhysical(chunk).ok());
  ASSERT_TRUE(sim.VmRelease(base, gran).ok());
  ASSERT_TRUE(sim.Free(0, other).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderChecker, UnmappingAfterTheWorkIsWaitedForIsFine) {
  SimOptions o = Options();
  SimBackend sim(o);
  const std::size_t gran = o.devices[0].vm_granularity;
  const Stream s = sim.CreateStream(0).value();
  const std::uintptr_t base = sim.VmReserve(0, gran).value();
  const PhysicalChunk chunk = sim.VmCreate(0, gran).value();
  ASSERT_TRUE(sim.VmMap(base, chunk).ok());
  ASSERT_TRUE(sim.VmSetAccess(base, gran, 0).ok());
  ASSERT_TRUE(sim.MemsetAsync(reinterpret_cast<void*>(base), 7, gran, s).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  ASSERT_TRUE(sim.VmUnmap(base, gran).ok());
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  ASSERT_TRUE(sim.VmReleasePhysical(chunk).ok());
  ASSERT_TRUE(sim.VmRelease(base, gran).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderChecker, HostWritesToPinnedMemoryRaceQueuedCopiesUntilSynchronised) {
  SimBackend sim(SlowOptions());
  const Stream s = sim.CreateStream(0).value();
  void* pinned = sim.HostAlloc(0, kBytes).value();
  void* dev = sim.Malloc(0, kBytes).value();
  ASSERT_TRUE(sim.NoteHostAccess(pinned, kBytes, AccessMode::kWrite).ok());
  std::memset(pinned, 1, kBytes);
  ASSERT_TRUE(sim.MemcpyAsync(dev, pinned, kBytes, CopyKind::kHostToDevice, s).ok());
  EXPECT_EQ(Violations(sim), 0u) << "the host wrote before enqueuing";
  ASSERT_TRUE(sim.NoteHostAccess(pinned, kBytes, AccessMode::kWrite).ok());  // copy may still read
  ASSERT_EQ(Violations(sim), 1u);
  EXPECT_THAT(Report(sim), HasSubstr("write by the host"));
  EXPECT_THAT(Report(sim), HasSubstr("pinned allocation"));
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  ASSERT_TRUE(sim.NoteHostAccess(pinned, kBytes, AccessMode::kWrite).ok());
  EXPECT_EQ(Violations(sim), 1u) << "after the sync the host may write";
  // A host access must name pinned or managed memory.
  EXPECT_EQ(sim.NoteHostAccess(dev, kBytes, AccessMode::kRead).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(sim.HostFree(0, pinned).ok());
  ASSERT_TRUE(sim.Free(0, dev).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderChecker, KernelsModelComputeAndAreCheckedLikeCopies) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Stream t = sim.CreateStream(0).value();
  auto* in = static_cast<unsigned char*>(sim.Malloc(0, kBytes).value());
  auto* out = static_cast<unsigned char*>(sim.Malloc(0, kBytes).value());
  ASSERT_TRUE(sim.LaunchKernel(s,
                               {{in, kBytes, AccessMode::kRead, 0},
                                {out, kBytes, AccessMode::kWrite, 9}},
                               10'000, "gemm")
                  .ok());
  std::vector<unsigned char> seen(kBytes);
  ASSERT_TRUE(sim.MemcpyAsync(seen.data(), out, kBytes, CopyKind::kDeviceToHost, s).ok());
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  EXPECT_EQ(seen, std::vector<unsigned char>(kBytes, 9)) << "a write sets its bytes";
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  ASSERT_TRUE(sim.LaunchKernel(t, {{out, kBytes, AccessMode::kWrite, 1}}, 0, "relu").ok());
  SimStreamGate gate = sim.HoldStream(s).value();
  ASSERT_TRUE(sim.LaunchKernel(s, {{out, kBytes, AccessMode::kRead, 0}}, 0, "reduce").ok());
  ASSERT_TRUE(sim.SynchronizeStream(t).ok());
  gate.Open();
  ASSERT_EQ(Violations(sim), 1u);
  EXPECT_THAT(Report(sim), HasSubstr("reduce"));
  EXPECT_THAT(Report(sim), HasSubstr("relu"));
  // Arguments outside device, managed or pinned memory are refused.
  std::vector<unsigned char> pageable(16);
  EXPECT_EQ(sim.LaunchKernel(s, {{pageable.data(), 16, AccessMode::kRead, 0}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim.LaunchKernel(s, {{in, kBytes + 1, AccessMode::kRead, 0}}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(sim.Free(0, in).ok());
  ASSERT_TRUE(sim.Free(0, out).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
  ASSERT_TRUE(sim.DestroyStream(t).ok());
}

TEST(SimStreamGate, HoldsTheStreamsWorkUntilOpened) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  const Event e = sim.CreateEvent(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  {
    SimStreamGate gate = sim.HoldStream(s).value();
    ASSERT_TRUE(sim.MemsetAsync(p, 1, kBytes, s).ok());
    ASSERT_TRUE(sim.RecordEvent(e, s).ok());
    for (int i = 0; i < 100; ++i) EXPECT_FALSE(sim.QueryEvent(e).value()) << "held";
    gate.Open();
    gate.Open();  // idempotent
  }
  ASSERT_TRUE(sim.SynchronizeEvent(e).ok());
  EXPECT_TRUE(sim.QueryEvent(e).value());
  { SimStreamGate closed = sim.HoldStream(s).value(); }  // opens when it goes away
  ASSERT_TRUE(sim.SynchronizeStream(s).ok());
  EXPECT_EQ(sim.HoldStream(Stream{999, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Violations(sim), 0u) << Report(sim);
  ASSERT_TRUE(sim.DestroyEvent(e).ok());
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderChecker, CountsWhatItChecked) {
  SimBackend sim(Options());
  const Stream s = sim.CreateStream(0).value();
  void* p = sim.Malloc(0, kBytes).value();
  void* q = sim.Malloc(0, kBytes).value();
  ASSERT_TRUE(sim.MemcpyAsync(q, p, kBytes, CopyKind::kDeviceToDevice, s).ok());
  ASSERT_TRUE(sim.MemsetAsync(p, 0, kBytes, s).ok());
  const StreamOrderStats st = sim.Accounting().stream_order;
  EXPECT_EQ(st.operations, 2u);
  EXPECT_EQ(st.accesses_checked, 3u);
  EXPECT_EQ(st.violations, 0u);
  ASSERT_TRUE(sim.Free(0, p).ok());
  ASSERT_TRUE(sim.Free(0, q).ok());
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST(StreamOrderCheckerDeathTest, AbortsAtTheFirstViolationWhenAsked) {
  SimOptions o = Options();
  o.abort_on_stream_order_violation = true;
  EXPECT_DEATH(
      {
        SimBackend sim(o);
        const Stream s = sim.CreateStream(0).value();
        const Stream t = sim.CreateStream(0).value();
        void* p = sim.Malloc(0, kBytes).value();
        (void)sim.MemsetAsync(p, 1, kBytes, s);
        (void)sim.MemsetAsync(p, 2, kBytes, t);
      },
      "stream-order violation: write by stream .* is not ordered after write by stream");
}

}  // namespace
}  // namespace gpualloc
