#include "allocator/host/pinned_host_allocator.h"

#include <atomic>
#include <barrier>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/host/host_only_backend_for_test.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

std::shared_ptr<SimBackend> Sim() {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(2, 64 << 20));
}

TEST(PinnedRoundUp, WastesAtMostAnEighth) {
  for (std::size_t n : {1ul, 4096ul, 4097ul, 5000ul, 65536ul, 100000ul, 3ul << 20, 20ul << 30,
                        (20ul << 30) + 1}) {
    const std::size_t r = PinnedRoundUp(n);
    EXPECT_GE(r, n);
    if (n > 4096) {
      EXPECT_LE(r - n, n / 8) << n;
    }
  }
  EXPECT_EQ(PinnedRoundUp(20ul << 30), 20ul << 30) << "20 GiB stays 20 GiB";
}

TEST(PinnedHostAllocator, ReusesCachedBlocksWithoutCallingTheRuntime) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  PinnedBlock a = pinned.Allocate(10000, 0).value();
  std::memset(a.ptr, 7, 10000);  // host-accessible
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  PinnedBlock b = pinned.Allocate(9000, 0).value();  // same rounded size
  EXPECT_EQ(b.ptr, a.ptr);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kHostAlloc), 1u);
  EXPECT_EQ(pinned.stats().hits, 1u);
  ASSERT_TRUE(pinned.Deallocate(b).ok());
}

// Bug: a pinned block freed while an async copy still read it was handed out
// again at once, and the next owner's writes reached the device instead of
// the original data.
TEST(PinnedHostAllocator, ABlockFreedWhileACopyReadsItIsNotReusedBeforeTheCopyIsDone) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  const Stream s = sim->CreateStream(0).value();
  constexpr std::size_t n = 64 * 1024;
  void* dev = sim->Malloc(0, n).value();
  PinnedBlock a = pinned.Allocate(n, 0).value();
  ASSERT_TRUE(sim->NoteHostAccess(a.ptr, n, AccessMode::kWrite).ok());
  std::memset(a.ptr, 1, n);
  // Work ahead of the copy keeps it queued while the block changes hands.
  ASSERT_TRUE(sim->LaunchKernel(s, {{dev, n, AccessMode::kRead, 0}}, 2'000'000).ok());
  ASSERT_TRUE(sim->MemcpyAsync(dev, a.ptr, n, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(pinned.RecordStream(a, s).ok());
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_EQ(pinned.stats().in_flight_blocks + pinned.stats().cached_bytes / n, 1u);
  PinnedBlock b = pinned.Allocate(n, 0).value();
  ASSERT_TRUE(sim->NoteHostAccess(b.ptr, n, AccessMode::kWrite).ok());
  std::memset(b.ptr, 2, n);
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  std::vector<unsigned char> seen(n);
  ASSERT_TRUE(sim->MemcpyAsync(seen.data(), dev, n, CopyKind::kDeviceToHost, s).ok());
  ASSERT_TRUE(sim->SynchronizeStream(s).ok());
  EXPECT_EQ(seen, std::vector<unsigned char>(n, 1)) << "the copy read the first owner's data";
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  ASSERT_TRUE(pinned.Flush(/*release_cache=*/true).ok());
  EXPECT_EQ(pinned.stats().in_flight_blocks, 0u);
  ASSERT_TRUE(sim->Free(0, dev).ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
}

TEST(PinnedHostAllocator, AFreedBlockComesBackOnceItsStreamsPassedTheFree) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  const Stream s = sim->CreateStream(0).value();
  const Stream t = sim->CreateStream(1).value();
  PinnedBlock a = pinned.Allocate(8192, 0).value();
  ASSERT_TRUE(pinned.RecordStream(a, s).ok());
  ASSERT_TRUE(pinned.RecordStream(a, t).ok());
  ASSERT_TRUE(pinned.RecordStream(a, t).ok());  // once is enough
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_EQ(pinned.stats().stream_waits, 2u) << "one event per stream";
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(1).ok());
  PinnedBlock b = pinned.Allocate(8192, 0).value();
  EXPECT_EQ(b.ptr, a.ptr) << "both streams passed the free: the block is reusable";
  EXPECT_EQ(pinned.stats().in_flight_blocks, 0u);
  EXPECT_EQ(pinned.RecordStream(PinnedBlock{&b, 1, 0}, s).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(PinnedHostAllocator, WhenNoEventCanBeRecordedAFreeWaitsForTheStreamOnTheHost) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  PinnedHostAllocator pinned(faulty);
  const Stream s = sim->CreateStream(0).value();
  constexpr std::size_t n = 64 * 1024;
  void* dev = sim->Malloc(0, n).value();
  PinnedBlock a = pinned.Allocate(n, 0).value();
  ASSERT_TRUE(sim->LaunchKernel(s, {{dev, n, AccessMode::kRead, 0}}, 2'000'000).ok());
  ASSERT_TRUE(sim->MemcpyAsync(dev, a.ptr, n, CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(pinned.RecordStream(a, s).ok());
  faulty->AddRule(FaultRule::EveryNth(BackendOp::kEventRecord, 1, FaultAction::kReturnError));
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  faulty->ClearRules();
  EXPECT_EQ(pinned.stats().host_waits, 1u);
  PinnedBlock b = pinned.Allocate(n, 0).value();
  EXPECT_EQ(b.ptr, a.ptr) << "waited for on the host: reusable at once";
  ASSERT_TRUE(sim->NoteHostAccess(b.ptr, n, AccessMode::kWrite).ok());
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  ASSERT_TRUE(sim->Free(0, dev).ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
}

// Found by the stress runner: a reaper queried a freed block's events outside
// the lock; meanwhile another thread reaped the block, reused it and freed it
// again with a copy in flight; the first reaper, matching by pointer, cached
// it on the strength of the old events and handed it out under the copy.
TEST(PinnedHostAllocator, AReaperNeverCachesABlockFreedAgainWhileItLooked) {
  auto backend = std::make_shared<testing_support::HostOnlyBackend>();
  PinnedHostAllocator pinned(backend);
  const Stream s{7, 0}, t{8, 0};
  PinnedBlock x = pinned.Allocate(4096, 0).value();
  ASSERT_TRUE(pinned.RecordStream(x, s).ok());
  ASSERT_TRUE(pinned.Deallocate(x).ok());  // in flight, its event already complete
  bool second_free_done = false;
  backend->OnNextQuery([&] {
    // Another thread, while the reaper below is between its query and its
    // lock: it reaps x, reuses it, and frees it with a copy still running.
    PinnedBlock again = pinned.Allocate(4096, 0).value();
    ASSERT_EQ(again.ptr, x.ptr);
    ASSERT_TRUE(pinned.RecordStream(again, t).ok());
    backend->HoldNewEvents();  // the copy on t is not done
    ASSERT_TRUE(pinned.Deallocate(again).ok());
    second_free_done = true;
  });
  PinnedBlock next = pinned.Allocate(4096, 0).value();
  ASSERT_TRUE(second_free_done);
  EXPECT_NE(next.ptr, x.ptr) << "handed out while the copy on t may still read it";
  EXPECT_EQ(pinned.stats().in_flight_blocks, 1u);
  backend->CompleteAll();
  ASSERT_TRUE(pinned.Deallocate(next).ok());
  ASSERT_TRUE(pinned.Flush(/*release_cache=*/true).ok());
  EXPECT_EQ(backend->outstanding(), 0);
}

// Found by the long fault campaign: events were destroyed right after use,
// and a destroy refused by a lost device leaked the event for good. They are
// pooled now and destroyed with the allocator, once the device is back.
TEST(PinnedHostAllocator, NoEventIsLostWhenTheDeviceIsLostWhileOneIsGivenBack) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  const Stream s = sim->CreateStream(0).value();
  {
    PinnedHostAllocator pinned(faulty);
    PinnedBlock b = pinned.Allocate(4096, 0).value();
    ASSERT_TRUE(pinned.RecordStream(b, s).ok());
    ASSERT_TRUE(pinned.Deallocate(b).ok());  // in flight, one event
    ASSERT_TRUE(sim->SynchronizeStream(s).ok());
    faulty->AddRule(FaultRule::NthCall(BackendOp::kEventDestroy, 1, FaultAction::kStickyError));
    PinnedBlock again = pinned.Allocate(4096, 0).value();  // reaps the in-flight block
    faulty->ClearRules();
    faulty->ClearStickyError();  // the device is back
    ASSERT_TRUE(pinned.Deallocate(again).ok());
  }
  EXPECT_EQ(sim->Accounting().live_events, 0u) << sim->Accounting().Describe();
  ASSERT_TRUE(sim->DestroyStream(s).ok());
}

TEST(PinnedHostAllocator, CacheIsBoundedLeastRecentlyCachedFirst) {
  auto sim = Sim();
  PinnedHostOptions o;
  o.cache_limit_bytes = 160 << 10;  // holds the last two of 8 KiB .. 80 KiB
  PinnedHostAllocator pinned(sim, o);
  std::vector<PinnedBlock> blocks;
  for (int i = 1; i <= 10; ++i) blocks.push_back(pinned.Allocate(i * 8192, 0).value());
  for (const PinnedBlock& b : blocks) ASSERT_TRUE(pinned.Deallocate(b).ok());
  EXPECT_LE(pinned.stats().cached_bytes, o.cache_limit_bytes);
  EXPECT_GT(pinned.stats().releases, 0u);
  // The most recently cached (the largest) survived.
  PinnedBlock again = pinned.Allocate(10 * 8192, 0).value();
  EXPECT_EQ(again.ptr, blocks.back().ptr);
  ASSERT_TRUE(pinned.Deallocate(again).ok());
}

TEST(PinnedHostAllocator, CrossDeviceFreesFromManyThreadsAreReleasedExactlyOnceAndQueuesStayBounded) {
  auto sim = Sim();
  PinnedHostOptions o;
  o.cache_limit_bytes = 0;        // every free is released (or queued) at once
  o.max_pending_per_owner = 16;
  auto pinned = std::make_unique<PinnedHostAllocator>(sim, o);
  constexpr int kThreads = 4, kPerThread = 200;
  std::vector<PinnedBlock> blocks;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    blocks.push_back(pinned->Allocate(4096 + (i % 7) * 1000, /*owner=*/0).value());
  }
  std::barrier start(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      if (!sim->SetDevice(1).ok()) ++failures;  // the owner is NOT current here
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        if (!pinned->Deallocate(blocks[t * kPerThread + i]).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  const PinnedHostStats mid = pinned->stats();
  EXPECT_LE(mid.max_pending_seen, o.max_pending_per_owner) << "the queue never grew unbounded";
  EXPECT_GT(mid.batch_switches, 0u);
  EXPECT_LT(mid.batch_switches, static_cast<std::uint64_t>(kThreads * kPerThread) / 8)
      << "one device switch per batch, not per free";
  pinned.reset();  // shutdown releases whatever is still queued
  const SimAccounting acc = sim->Accounting();
  EXPECT_EQ(acc.devices[0].pinned_bytes, 0u) << acc.Describe();
  EXPECT_EQ(acc.calls_to(BackendOp::kHostFree), static_cast<std::uint64_t>(kThreads * kPerThread))
      << "every block released exactly once";
}

TEST(PinnedHostAllocator, QueueIsReleasedWhenItsOwnerBecomesCurrent) {
  auto sim = Sim();
  PinnedHostOptions o;
  o.cache_limit_bytes = 0;
  o.max_pending_per_owner = 1000;
  PinnedHostAllocator pinned(sim, o);
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  PinnedBlock b = pinned.Allocate(4096, 0).value();
  std::thread([&] {
    ASSERT_TRUE(sim->SetDevice(1).ok());
    ASSERT_TRUE(pinned.Deallocate(a).ok());
    ASSERT_TRUE(pinned.Deallocate(b).ok());
  }).join();
  EXPECT_EQ(pinned.stats().pending_blocks, 2u);
  const std::uint64_t switches = pinned.stats().batch_switches;
  pinned.OnDeviceCurrent(0);  // this thread's device is 0: no switch needed
  EXPECT_EQ(pinned.stats().pending_blocks, 0u);
  EXPECT_EQ(pinned.stats().batch_switches, switches);
  EXPECT_EQ(sim->Accounting().devices[0].pinned_bytes, 0u);
}

TEST(PinnedHostAllocator, AReleaseTheRuntimeRefusesIsKeptAndRetried) {
  auto sim = Sim();
  auto fp = std::make_shared<FailpointBackend>(sim, 1);
  fp->AddRule(FaultRule::NthCall(BackendOp::kHostFree, 1, FaultAction::kThrowRuntimeError));
  PinnedHostOptions o;
  o.cache_limit_bytes = 0;
  PinnedHostAllocator pinned(fp, o);
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_EQ(pinned.stats().failed_releases, 1u);
  EXPECT_EQ(pinned.stats().pending_blocks, 1u) << "kept, not lost";
  ASSERT_TRUE(pinned.Flush().ok());
  EXPECT_EQ(sim->Accounting().devices[0].pinned_bytes, 0u);
}

// A runtime that refuses every release used to have its refusals re-queued
// and retried by every later eviction: the free path made quadratically many
// runtime calls, and the queue past its bound never stopped triggering.
TEST(PinnedHostAllocator, RefusedReleasesAreNotRetriedOnTheFreePath) {
  auto sim = Sim();
  auto fp = std::make_shared<FailpointBackend>(sim, 1);
  PinnedHostOptions o;
  o.cache_limit_bytes = 0;  // every free evicts
  o.max_pending_per_owner = 4;
  PinnedHostAllocator pinned(fp, o);
  ASSERT_TRUE(sim->SetDevice(0).ok());  // owner 1 is never current here
  constexpr int kBlocks = 200;
  std::vector<PinnedBlock> blocks;
  for (int i = 0; i < kBlocks; ++i) blocks.push_back(pinned.Allocate(4096, 1).value());
  fp->AddRule(FaultRule::EveryNth(BackendOp::kHostFree, 1, FaultAction::kReturnError));
  for (const PinnedBlock& b : blocks) ASSERT_TRUE(pinned.Deallocate(b).ok());
  const std::uint64_t attempts = fp->calls(BackendOp::kHostFree);
  EXPECT_LE(attempts, static_cast<std::uint64_t>(kBlocks))
      << "each refused block was tried once on the free path, not again and again";
  const PinnedHostStats s = pinned.stats();
  EXPECT_EQ(s.pending_blocks, static_cast<std::size_t>(kBlocks)) << "kept, none lost";
  EXPECT_EQ(s.refused_blocks, attempts);
  EXPECT_FALSE(pinned.Flush().ok()) << "still refused: Flush says so";
  fp->ClearRules();
  ASSERT_TRUE(pinned.Flush().ok()) << "retried by Flush once the runtime accepts";
  EXPECT_EQ(pinned.stats().pending_blocks, 0u);
  EXPECT_EQ(pinned.stats().refused_blocks, 0u);
  EXPECT_EQ(sim->Accounting().devices[1].pinned_bytes, 0u);
}

// A cached block serves a smaller request if it wastes at most an eighth
// more than the request, and not beyond.
TEST(PinnedHostAllocator, ACachedBlockServesRequestsUpToAnEighthSmaller) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  const std::size_t request = PinnedRoundUp(8 * 4096);
  const std::size_t eighth_more = PinnedRoundUp(request + request / 8);
  ASSERT_EQ(eighth_more - request, request / 8) << "the test needs an exact eighth";
  PinnedBlock a = pinned.Allocate(eighth_more, 0).value();
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  const std::uint64_t hits = pinned.stats().hits;
  PinnedBlock b = pinned.Allocate(request, 0).value();
  EXPECT_EQ(b.ptr, a.ptr) << "exactly an eighth more: reused";
  EXPECT_EQ(pinned.stats().hits, hits + 1);
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  PinnedBlock c = pinned.Allocate(PinnedRoundUp(request - 4096), 0).value();
  EXPECT_NE(c.ptr, a.ptr) << "more than an eighth more: a new block";
  ASSERT_TRUE(pinned.Deallocate(c).ok());
}

// Only running out of pinned memory gives the cache back for a retry; any
// other failure is returned as it is, the cache untouched.
TEST(PinnedHostAllocator, OnlyOutOfMemoryFlushesTheCache) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  PinnedHostAllocator pinned(faulty);
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  const std::size_t cached = pinned.stats().cached_bytes;
  ASSERT_GT(cached, 0u);
  FaultRule lost = FaultRule::EveryNth(BackendOp::kHostAlloc, 1, FaultAction::kReturnError);
  lost.code = absl::StatusCode::kInternal;
  faulty->AddRule(lost);
  const absl::Status st = pinned.Allocate(1 << 20, 0).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_EQ(pinned.stats().cached_bytes, cached) << "a non-OOM failure flushed the cache";
  EXPECT_EQ(faulty->calls(BackendOp::kHostAlloc), 2u) << "and was not retried";
  faulty->ClearRules();
  faulty->AddRule(FaultRule::NthCall(BackendOp::kHostAlloc, 3, FaultAction::kReturnError));
  PinnedBlock big = pinned.Allocate(1 << 20, 0).value();  // OOM once: flushed, retried
  EXPECT_EQ(pinned.stats().cached_bytes, 0u);
  ASSERT_TRUE(pinned.Deallocate(big).ok());
}

// Destroyed with blocks still live, it says how many (their memory is the
// caller's leak, not freed behind its back); with none, it says nothing.
TEST(PinnedHostAllocator, DestructionNamesBlocksStillLive) {
  auto sim = Sim();
  void* leaked = nullptr;
  testing::internal::CaptureStderr();
  {
    PinnedHostAllocator pinned(sim);
    leaked = pinned.Allocate(4096, 0).value().ptr;
  }
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("1 blocks (4096 bytes) still live at destruction"), std::string::npos)
      << said;
  ASSERT_TRUE(sim->HostFree(0, leaked).ok());
  testing::internal::CaptureStderr();
  {
    PinnedHostAllocator pinned(sim);
    PinnedBlock b = pinned.Allocate(4096, 0).value();
    ASSERT_TRUE(pinned.Deallocate(b).ok());
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(PinnedHostAllocator, BadInputIsRejected) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  EXPECT_FALSE(pinned.Allocate(0, 0).ok());
  EXPECT_FALSE(pinned.Allocate(4096, 7).ok()) << "no such device";
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  EXPECT_FALSE(pinned.Deallocate(PinnedBlock{a.ptr, a.bytes, 1}).ok()) << "wrong owner";
  int local = 0;
  EXPECT_FALSE(pinned.Deallocate(PinnedBlock{&local, 4, 0}).ok()) << "foreign";
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_FALSE(pinned.Deallocate(a).ok()) << "double free";
}

}  // namespace
}  // namespace gpualloc
