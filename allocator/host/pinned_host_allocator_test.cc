#include "allocator/host/pinned_host_allocator.h"

#include <atomic>
#include <barrier>
#include <cstring>
#include <random>
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

// Every request its own segment: for the tests of queues and releases, which
// count segments as blocks.
PinnedHostOptions OneSegmentPerBlock(std::size_t cache_limit_bytes) {
  PinnedHostOptions o;
  o.cache_limit_bytes = cache_limit_bytes;
  o.small_request_max = 0;
  o.large_segment_round = kPinnedBlockAlignment;
  return o;
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
  EXPECT_EQ(pinned.stats().live_bytes, 0u);
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
  // Exactly the last two of 8 .. 80 KiB: a cache at its bound keeps both.
  const PinnedHostOptions o = OneSegmentPerBlock((9 + 10) * 8192);
  PinnedHostAllocator pinned(sim, o);
  std::vector<PinnedBlock> blocks;
  for (int i = 1; i <= 10; ++i) blocks.push_back(pinned.Allocate(i * 8192, 0).value());
  for (const PinnedBlock& b : blocks) ASSERT_TRUE(pinned.Deallocate(b).ok());
  EXPECT_LE(pinned.stats().cached_bytes, o.cache_limit_bytes);
  EXPECT_GT(pinned.stats().releases, 0u);
  // The most recently cached (the largest two) survived.
  EXPECT_EQ(pinned.stats().cached_bytes, o.cache_limit_bytes);
  EXPECT_EQ(pinned.stats().free_segments, 2u);
  PinnedBlock again = pinned.Allocate(10 * 8192, 0).value();
  EXPECT_EQ(again.ptr, blocks.back().ptr);
  PinnedBlock ninth = pinned.Allocate(9 * 8192, 0).value();
  EXPECT_EQ(ninth.ptr, blocks[8].ptr) << "evicted at the bound, not only beyond it";
  ASSERT_TRUE(pinned.Deallocate(again).ok());
  ASSERT_TRUE(pinned.Deallocate(ninth).ok());
}

TEST(PinnedHostAllocator, CrossDeviceFreesFromManyThreadsAreReleasedExactlyOnceAndQueuesStayBounded) {
  auto sim = Sim();
  PinnedHostOptions o = OneSegmentPerBlock(0);  // every free is released (or queued) at once
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
  PinnedHostOptions o = OneSegmentPerBlock(0);
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
  EXPECT_EQ(pinned.stats().max_pending_seen, 2u);
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
  PinnedHostOptions o = OneSegmentPerBlock(0);  // every free evicts
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

// Bug class: a cache of whole blocks, reused only for requests of about the
// same size, asked the runtime again for most requests of a workload whose
// sizes vary (422 calls per 1,000 operations in the random benchmark).
TEST(PinnedHostAllocator, SmallRequestsAreCarvedFromOneSegmentAndFreedNeighboursMerge) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  PinnedBlock a = pinned.Allocate(1000, 0).value();
  PinnedBlock b = pinned.Allocate(3000, 0).value();
  PinnedBlock c = pinned.Allocate(4096, 0).value();
  EXPECT_EQ(a.bytes, 1024u) << "512-byte multiples";
  EXPECT_EQ(b.bytes, 3072u);
  EXPECT_EQ(static_cast<char*>(b.ptr), static_cast<char*>(a.ptr) + a.bytes) << "best fit, split";
  EXPECT_EQ(static_cast<char*>(c.ptr), static_cast<char*>(b.ptr) + b.bytes);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kHostAlloc), 1u) << "one segment for all three";
  PinnedHostStats s = pinned.stats();
  EXPECT_EQ(s.reserved_bytes, std::size_t{2} << 20);
  EXPECT_EQ(s.live_bytes, 8192u);
  EXPECT_EQ(s.cached_bytes, (std::size_t{2} << 20) - 8192);
  // a and b merge into one 4 KiB range, which serves a 4 KiB request at a.
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  PinnedBlock d = pinned.Allocate(4096, 0).value();
  EXPECT_EQ(d.ptr, a.ptr) << "the freed neighbours did not merge";
  // Freeing c merges it with the tail, so a 1 MiB request fits at c (best
  // fit would take the tail if c were a 4 KiB range of its own).
  ASSERT_TRUE(pinned.Deallocate(c).ok());
  PinnedBlock e = pinned.Allocate(std::size_t{1} << 20, 0).value();
  EXPECT_EQ(e.ptr, c.ptr) << "c did not merge with the free tail";
  s = pinned.stats();
  EXPECT_EQ(s.cached_bytes, (std::size_t{1} << 20) - 4096);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 4u);
  ASSERT_TRUE(pinned.Deallocate(d).ok());
  ASSERT_TRUE(pinned.Deallocate(e).ok());
  ASSERT_TRUE(pinned.Flush(/*release_cache=*/true).ok());
  EXPECT_EQ(pinned.stats().reserved_bytes, 0u);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kHostFree), 1u) << "one segment, released once";
  EXPECT_EQ(pinned.stats().peak_reserved_bytes, std::size_t{2} << 20);
}

// A free range at the start of a segment that still has a live block is
// carved without taking the segment for a wholly free one.
TEST(PinnedHostAllocator, OnlyAWhollyFreeSegmentIsAReleaseCandidate) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  PinnedBlock a = pinned.Allocate(8192, 0).value();
  PinnedBlock b = pinned.Allocate(8192, 0).value();
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_EQ(pinned.stats().free_segments, 0u) << "b is live in it";
  PinnedBlock c = pinned.Allocate(4096, 0).value();  // from a's range, at the segment's start
  EXPECT_EQ(c.ptr, a.ptr);
  EXPECT_EQ(pinned.stats().free_segments, 0u);
  ASSERT_TRUE(pinned.Deallocate(b).ok());
  ASSERT_TRUE(pinned.Deallocate(c).ok());
  EXPECT_EQ(pinned.stats().free_segments, 1u);
  PinnedBlock d = pinned.Allocate(4096, 0).value();  // takes the wholly free segment again
  EXPECT_EQ(pinned.stats().free_segments, 0u);
  ASSERT_TRUE(pinned.Deallocate(d).ok());
  EXPECT_EQ(pinned.stats().free_segments, 1u);
}

// The size rules at their edges: a request of exactly small_request_max is
// small, and a rest of exactly one alignment unit is split off, on a new
// segment and on a cached one.
TEST(PinnedHostAllocator, SizeRulesHoldAtTheirEdges) {
  auto sim = Sim();
  PinnedHostAllocator pinned(sim);
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  PinnedBlock edge = pinned.Allocate(kMiB, 0).value();
  PinnedBlock small = pinned.Allocate(4096, 0).value();
  EXPECT_EQ(pinned.stats().misses, 1u) << "1 MiB is small: both share one 2 MiB segment";
  ASSERT_TRUE(pinned.Deallocate(edge).ok());
  ASSERT_TRUE(pinned.Deallocate(small).ok());
  // Small segments of 64 KiB: a request of 64 KiB - 512 leaves one unit.
  PinnedHostOptions o;
  o.small_request_max = 64 << 10;
  o.small_segment_bytes = 64 << 10;
  PinnedHostAllocator units(sim, o);
  const std::size_t most = (64 << 10) - kPinnedBlockAlignment;
  for (const char* from : {"a new segment", "the cached segment, split again"}) {
    SCOPED_TRACE(from);
    PinnedBlock block = units.Allocate(most, 0).value();
    EXPECT_EQ(block.bytes, most);
    PinnedBlock unit = units.Allocate(kPinnedBlockAlignment, 0).value();
    EXPECT_EQ(static_cast<char*>(unit.ptr), static_cast<char*>(block.ptr) + most);
    EXPECT_EQ(units.stats().misses, 1u);
    ASSERT_TRUE(units.Deallocate(block).ok());
    ASSERT_TRUE(units.Deallocate(unit).ok());
  }
}

// Frees queued for owner 0 by a thread on another device go back, in one
// batch and with no device switch, as soon as a thread whose device is 0
// allocates for owner 0; an allocation from elsewhere leaves them queued.
TEST(PinnedHostAllocator, AnAllocationOnTheOwnersDeviceReleasesItsQueue) {
  auto sim = Sim();
  PinnedHostOptions o = OneSegmentPerBlock(0);
  o.max_pending_per_owner = 1000;
  PinnedHostAllocator pinned(sim, o);
  ASSERT_TRUE(sim->SetDevice(0).ok());
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  PinnedBlock b = pinned.Allocate(4096, 0).value();
  std::thread([&] {
    ASSERT_TRUE(sim->SetDevice(1).ok());
    ASSERT_TRUE(pinned.Deallocate(a).ok());
    ASSERT_TRUE(pinned.Deallocate(b).ok());
    PinnedBlock c = pinned.Allocate(4096, 0).value();  // owner 0 is not current here
    EXPECT_EQ(pinned.stats().pending_blocks, 2u);
    ASSERT_TRUE(pinned.Deallocate(c).ok());
  }).join();
  EXPECT_EQ(pinned.stats().pending_blocks, 3u);
  const std::uint64_t switches = pinned.stats().batch_switches;
  PinnedBlock d = pinned.Allocate(4096, 0).value();  // device 0 is current here
  EXPECT_EQ(pinned.stats().pending_blocks, 0u);
  EXPECT_EQ(pinned.stats().batch_switches, switches);
  ASSERT_TRUE(pinned.Deallocate(d).ok());
}

// A large request gets a segment of its own; its free tail serves other large
// requests, never small ones, so a long-lived small block cannot pin it.
TEST(PinnedHostAllocator, LargeSegmentsServeLargeRequestsOnly) {
  auto sim = Sim();
  PinnedHostOptions o;
  o.cache_limit_bytes = 0;  // a wholly free segment goes back at once
  PinnedHostAllocator pinned(sim, o);
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  PinnedBlock big = pinned.Allocate(4 * kMiB + 1, 0).value();  // a 6 MiB segment
  EXPECT_EQ(big.bytes, 4 * kMiB + kPinnedBlockAlignment);
  EXPECT_EQ(pinned.stats().reserved_bytes, 6 * kMiB);
  PinnedBlock tail = pinned.Allocate(kMiB + 1, 0).value();  // large: from big's free tail
  EXPECT_EQ(static_cast<char*>(tail.ptr), static_cast<char*>(big.ptr) + big.bytes);
  EXPECT_EQ(pinned.stats().misses, 1u);
  PinnedBlock small = pinned.Allocate(4096, 0).value();
  EXPECT_EQ(pinned.stats().misses, 2u) << "a small request took a large segment's range";
  ASSERT_TRUE(pinned.Deallocate(big).ok());
  ASSERT_TRUE(pinned.Deallocate(tail).ok());
  EXPECT_EQ(pinned.stats().reserved_bytes, 2 * kMiB) << "the large segment was released";
  ASSERT_TRUE(pinned.Deallocate(small).ok());
  EXPECT_EQ(pinned.stats().reserved_bytes, 0u);
  EXPECT_EQ(sim->Accounting().devices[0].pinned_bytes, 0u);
}

// The steady state of a workload whose sizes vary: after a warm-up, the
// allocator serves it from what it holds. Bug: no merge on free, or a free
// range found by size only when it matches exactly, and the runtime is
// asked again and again.
TEST(PinnedHostAllocator, AVaryingWorkloadReachesASteadyStateWithoutRuntimeCalls) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  PinnedHostAllocator pinned(sim);
  std::mt19937_64 rng(7);
  std::vector<PinnedBlock> live;
  auto step = [&] {
    if (live.size() < 32 && (live.empty() || rng() % 2 == 0)) {
      // Log-uniform, 256 B .. 4 MiB.
      const std::size_t bytes = std::size_t{256} << (rng() % 15);
      live.push_back(pinned.Allocate(bytes + rng() % bytes, 0).value());
    } else {
      const std::size_t k = rng() % live.size();
      ASSERT_TRUE(pinned.Deallocate(live[k]).ok());
      live[k] = live.back();
      live.pop_back();
    }
  };
  for (int i = 0; i < 4000; ++i) step();
  const std::uint64_t before = sim->Accounting().calls_to(BackendOp::kHostAlloc) +
                               sim->Accounting().calls_to(BackendOp::kHostFree);
  for (int i = 0; i < 4000; ++i) step();
  const std::uint64_t calls = sim->Accounting().calls_to(BackendOp::kHostAlloc) +
                              sim->Accounting().calls_to(BackendOp::kHostFree) - before;
  EXPECT_LE(calls, 4u) << "runtime calls in 4,000 steady-state operations";
  EXPECT_LE(pinned.stats().misses, 40u) << "segments asked for in all";
  for (const PinnedBlock& b : live) ASSERT_TRUE(pinned.Deallocate(b).ok());
  ASSERT_TRUE(pinned.Flush(/*release_cache=*/true).ok());
  EXPECT_EQ(sim->Accounting().devices[0].pinned_bytes, 0u);
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
  const absl::Status st = pinned.Allocate(4 << 20, 0).status();  // a segment of its own
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_EQ(pinned.stats().cached_bytes, cached) << "a non-OOM failure flushed the cache";
  EXPECT_EQ(faulty->calls(BackendOp::kHostAlloc), 2u) << "and was not retried";
  faulty->ClearRules();
  faulty->AddRule(FaultRule::NthCall(BackendOp::kHostAlloc, 3, FaultAction::kReturnError));
  PinnedBlock big = pinned.Allocate(4 << 20, 0).value();  // OOM once: flushed, retried
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
  // The first overflows the block rounding, the second the segment rounding.
  for (std::size_t absurd : {~std::size_t{0}, ~std::size_t{0} - 600}) {
    EXPECT_EQ(pinned.Allocate(absurd, 0).status().code(), absl::StatusCode::kResourceExhausted)
        << absurd;
  }
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kHostAlloc), 0u) << "refused before the runtime";
  EXPECT_FALSE(pinned.Allocate(4096, 7).ok()) << "no such device";
  PinnedBlock a = pinned.Allocate(4096, 0).value();
  EXPECT_FALSE(pinned.Deallocate(PinnedBlock{a.ptr, a.bytes, 1}).ok()) << "wrong owner";
  int local = 0;
  EXPECT_FALSE(pinned.Deallocate(PinnedBlock{&local, 4, 0}).ok()) << "foreign";
  void* inside = static_cast<char*>(a.ptr) + kPinnedBlockAlignment;
  EXPECT_FALSE(pinned.Deallocate(PinnedBlock{inside, a.bytes, 0}).ok())
      << "inside a live block, or in its segment's free range";
  ASSERT_TRUE(pinned.Deallocate(a).ok());
  EXPECT_FALSE(pinned.Deallocate(a).ok()) << "double free";
}

}  // namespace
}  // namespace gpualloc
