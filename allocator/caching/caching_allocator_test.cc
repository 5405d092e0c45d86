#include "allocator/caching/caching_allocator.h"

#include <atomic>
#include <barrier>
#include <random>
#include <thread>
#include <functional>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/policy/allocation_tag.h"
#include "gtest/gtest.h"
#include "harness/invariants/invariants.h"
#include "harness/testing/failing_memory_resource.h"

namespace gpualloc {
namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * 1024;

std::shared_ptr<SimBackend> Sim(std::size_t capacity = 256 * kMiB, SimCostModel cost = {}) {
  SimOptions o = SimOptions::WithDevices(1, capacity);
  o.cost = cost;
  return std::make_shared<SimBackend>(o);
}

std::unique_ptr<CachingAllocator> Cache(std::shared_ptr<Backend> backend,
                                        CachingOptions options = {}) {
  auto c = CachingAllocator::Create(std::move(backend), 0, options);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

void ExpectConsistent(const CachingAllocator& cache) {
  absl::Status st = harness::CheckSnapshot(cache.Snapshot());
  EXPECT_TRUE(st.ok()) << st;
}

Stream S0() { return Stream::Default(0); }

// The recorder (AllocationRecorder, what TrackingAdaptor reads): each live
// allocation's order and tag, kept in its block. Interning a tag it has not
// seen is the only bookkeeping it adds; when that fails, the allocation
// fails and nothing changes.
TEST(CachingAllocator, RecordsOrderAndTagAndAFailedTagInternChangesNothing) {
  harness::FailingMemoryResource metadata;
  CachingOptions options;
  options.metadata_resource = &metadata;
  auto sim = Sim();
  auto cache = Cache(sim, options);
  Allocation unrecorded = cache->Allocate(4096).value();
  cache->StartRecording();
  Allocation first = [&] {
    ScopedAllocationTag tag("weights");
    return cache->Allocate(4096).value();
  }();
  {
    // Warm: the pair below allocates no block or node of its own.
    ScopedAllocationTag tag("weights");
    ASSERT_TRUE(cache->Deallocate(cache->Allocate(4096).value()).ok());
  }
  const MemorySnapshot before = cache->Snapshot();
  metadata.FailAll();
  {
    ScopedAllocationTag tag("a new tag");
    absl::StatusOr<Allocation> refused = cache->Allocate(4096);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  }
  EXPECT_EQ(cache->Snapshot().stats.allocated_bytes.current,
            before.stats.allocated_bytes.current);
  EXPECT_EQ(cache->Snapshot().segments.size(), before.segments.size());
  Allocation second = [&] {
    ScopedAllocationTag tag("weights");  // interned already: no memory needed
    return cache->Allocate(4096).value();
  }();
  metadata.FailNone();
  Allocation untagged = cache->Allocate(4096).value();
  const std::vector<RecordedAllocation> live = cache->RecordedLive();
  ASSERT_EQ(live.size(), 3u) << "the allocation made before recording is not listed";
  EXPECT_EQ(cache->recorded_live_count(), 3u);
  EXPECT_EQ(live[0].allocation, first);
  EXPECT_EQ(live[1].allocation, second);
  EXPECT_EQ(live[2].allocation, untagged);
  EXPECT_EQ(live[0].tag, "weights");
  EXPECT_EQ(live[1].tag, "weights");
  EXPECT_EQ(live[2].tag, "");
  EXPECT_LT(live[0].sequence, live[1].sequence);
  EXPECT_LT(live[1].sequence, live[2].sequence);
  for (const Allocation& a : {first, second, untagged, unrecorded}) {
    ASSERT_TRUE(cache->Deallocate(a).ok());
  }
  EXPECT_EQ(cache->recorded_live_count(), 0u);
  ExpectConsistent(*cache);
}

TEST(CachingAllocator, RoundsRequestsAndChoosesThePool) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Allocation tiny = cache->Allocate(1).value();
  Allocation big = cache->Allocate(2 * kMiB).value();
  MemorySnapshot snap = cache->Snapshot();
  ASSERT_EQ(snap.segments.size(), 2u);
  for (const SegmentSnapshot& s : snap.segments) {
    if (s.small_pool) {
      EXPECT_EQ(s.size, 2 * kMiB) << "small segments are 2 MiB";
      EXPECT_EQ(s.blocks.front().size, 512u) << "1 byte rounds to 512";
    } else {
      EXPECT_EQ(s.size, 20 * kMiB) << "large requests under 10 MiB share 20 MiB segments";
    }
  }
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->Deallocate(tiny).ok());
  ASSERT_TRUE(cache->Deallocate(big).ok());
  auto fresh = Cache(sim);
  Allocation huge = fresh->Allocate(11 * kMiB + 1).value();
  EXPECT_EQ(fresh->stats().reserved_bytes.current, static_cast<std::int64_t>(12 * kMiB))
      << "a request of 10 MiB or more gets its own segment rounded up to 2 MiB";
  ASSERT_TRUE(fresh->Deallocate(huge).ok());
}

TEST(CachingAllocator, FreedBlockIsReusedOnTheSameStreamWithoutABackendCall) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Allocation a = cache->Allocate(64 * kKiB).value();
  ASSERT_TRUE(cache->Deallocate(a).ok());
  const std::uint64_t mallocs = sim->Accounting().calls_to(BackendOp::kMalloc);
  Allocation b = cache->Allocate(64 * kKiB).value();
  EXPECT_EQ(b.ptr, a.ptr);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), mallocs);
  MemoryStats s = cache->stats();
  EXPECT_EQ(s.cache_hits, 1u);
  EXPECT_EQ(s.cache_misses, 1u);
  ASSERT_TRUE(cache->Deallocate(b).ok());
}

TEST(CachingAllocator, SplitsBlocksAndCoalescesFreeNeighbours) {
  auto cache = Cache(Sim());
  Allocation a = cache->Allocate(4 * kKiB).value();
  Allocation b = cache->Allocate(8 * kKiB).value();
  Allocation c = cache->Allocate(16 * kKiB).value();
  EXPECT_EQ(static_cast<char*>(b.ptr), static_cast<char*>(a.ptr) + 4 * kKiB);
  EXPECT_EQ(static_cast<char*>(c.ptr), static_cast<char*>(b.ptr) + 8 * kKiB);
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->Deallocate(b).ok());
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ExpectConsistent(*cache);
  MemorySnapshot mid = cache->Snapshot();
  ASSERT_EQ(mid.segments.size(), 1u);
  EXPECT_EQ(mid.segments[0].blocks.front().size, 12 * kKiB) << "a and b merged";
  ASSERT_TRUE(cache->Deallocate(c).ok());
  MemorySnapshot end = cache->Snapshot();
  ASSERT_EQ(end.segments[0].blocks.size(), 1u) << "the segment is whole again";
  EXPECT_EQ(end.segments[0].blocks[0].size, 2 * kMiB);
  ExpectConsistent(*cache);
}

TEST(CachingAllocator, TakesTheBestFittingHole) {
  auto cache = Cache(Sim());
  std::vector<Allocation> keep, holes;
  for (std::size_t size : {16 * kKiB, 4 * kKiB, 8 * kKiB}) {
    holes.push_back(cache->Allocate(size).value());
    keep.push_back(cache->Allocate(512).value());  // separator
  }
  for (const Allocation& h : holes) ASSERT_TRUE(cache->Deallocate(h).ok());
  Allocation fit = cache->Allocate(6 * kKiB).value();
  EXPECT_EQ(fit.ptr, holes[2].ptr) << "the 8 KiB hole, not the 16 KiB one";
  ASSERT_TRUE(cache->Deallocate(fit).ok());
  for (const Allocation& k : keep) ASSERT_TRUE(cache->Deallocate(k).ok());
  ExpectConsistent(*cache);
}

// Splits and merges keep a free block in its pool when its place in the
// best-fit order holds, and move it when it does not: either way the order
// stays right, so best fit still finds the right hole.
TEST(CachingAllocator, InPlaceSplitsAndMergesKeepTheBestFitOrder) {
  auto cache = Cache(Sim());
  std::vector<Allocation> keep, holes;
  for (std::size_t size : {16 * kKiB, 8 * kKiB}) {
    holes.push_back(cache->Allocate(size).value());
    keep.push_back(cache->Allocate(512).value());  // separator
  }
  for (const Allocation& h : holes) ASSERT_TRUE(cache->Deallocate(h).ok());
  ExpectConsistent(*cache);
  // 12 KiB from the 16 KiB hole: its 4 KiB remainder now sorts below the
  // 8 KiB hole, so it must move.
  Allocation a = cache->Allocate(12 * kKiB).value();
  EXPECT_EQ(a.ptr, holes[0].ptr);
  ExpectConsistent(*cache);
  Allocation b = cache->Allocate(8 * kKiB).value();
  EXPECT_EQ(b.ptr, holes[1].ptr) << "the 8 KiB hole, found after the remainder moved";
  Allocation c = cache->Allocate(4 * kKiB).value();
  EXPECT_EQ(c.ptr, static_cast<char*>(holes[0].ptr) + 12 * kKiB) << "the 4 KiB remainder";
  ExpectConsistent(*cache);
  // Free in an order that merges into the right neighbour, then both sides.
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->Deallocate(c).ok());
  ExpectConsistent(*cache);
  Allocation whole = cache->Allocate(16 * kKiB).value();
  EXPECT_EQ(whole.ptr, holes[0].ptr) << "the two pieces merged back into the 16 KiB hole";
  ASSERT_TRUE(cache->Deallocate(whole).ok());
  ASSERT_TRUE(cache->Deallocate(b).ok());
  // The steady state of a pair: split off the front, merge it back, in place.
  const std::uint64_t allocs = cache->stats().upstream_allocs;
  for (int i = 0; i < 100; ++i) {
    Allocation p = cache->Allocate(256).value();
    EXPECT_EQ(p.ptr, holes[1].ptr) << "best fit: the 8 KiB hole";
    ASSERT_TRUE(cache->Deallocate(p).ok());
  }
  EXPECT_EQ(cache->stats().upstream_allocs, allocs);
  ExpectConsistent(*cache);
  for (const Allocation& k : keep) ASSERT_TRUE(cache->Deallocate(k).ok());
  ExpectConsistent(*cache);
}

// A merge that grows a free block past another: a free 4 KiB block takes in
// its freed 8 KiB neighbour and becomes 12 KiB, which must now sort after an
// 8 KiB hole, or best fit would hand out the 12 KiB block for 8 KiB.
TEST(CachingAllocator, AMergeThatGrowsABlockPastAnotherMovesIt) {
  auto cache = Cache(Sim());  // one fresh segment: allocations carve it in order
  Allocation sep0 = cache->Allocate(512).value();
  Allocation grow = cache->Allocate(8 * kKiB).value();
  Allocation right = cache->Allocate(4 * kKiB).value();
  Allocation sep1 = cache->Allocate(512).value();
  Allocation other = cache->Allocate(8 * kKiB).value();
  Allocation sep2 = cache->Allocate(512).value();
  ASSERT_EQ(static_cast<char*>(grow.ptr) + 8 * kKiB, right.ptr);
  ASSERT_TRUE(cache->Deallocate(right).ok());
  ASSERT_TRUE(cache->Deallocate(other).ok());
  ASSERT_TRUE(cache->Deallocate(grow).ok());  // merges into `right`'s free block
  ExpectConsistent(*cache);
  Allocation eight = cache->Allocate(8 * kKiB).value();
  EXPECT_EQ(eight.ptr, other.ptr) << "the 8 KiB hole, not the merged 12 KiB block";
  Allocation twelve = cache->Allocate(12 * kKiB).value();
  EXPECT_EQ(twelve.ptr, grow.ptr) << "the merged block, at the freed block's address";
  for (const Allocation& x : {eight, twelve, sep0, sep1, sep2}) {
    ASSERT_TRUE(cache->Deallocate(x).ok());
  }
  ExpectConsistent(*cache);
}

// A stream with slow work on it: a large copy costs ~`ms` milliseconds.
struct SlowStream {
  SlowStream(SimBackend& sim, Stream stream, const Allocation& target, int ms)
      : host(ms * 16 * kKiB) {
    EXPECT_TRUE(sim.MemcpyAsync(target.ptr, host.data(),
                                std::min(host.size(), target.bytes), CopyKind::kHostToDevice,
                                stream).ok());
  }
  std::vector<char> host;
};

SimCostModel SlowCopies() {
  SimCostModel c;
  c.copy_ns_per_kib = 62'500;  // 16 KiB per millisecond
  return c;
}

// The sim's stream-order checker judges every reuse by happens-before, not by
// how fast the streams ran: each test below fails on every run when the wait
// it covers is removed from the allocator.
void ExpectNoStreamOrderViolation(const SimBackend& sim) {
  absl::Status st = sim.CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
}

// One request fills one segment, so a second stream has no free block of its
// own and must take the first stream's or make a new segment.
CachingOptions OneBlockPerSegment(CrossStreamReuse reuse) {
  CachingOptions o;
  o.cross_stream = reuse;
  o.small_request_max = 512 * kKiB;
  o.small_segment_bytes = 512 * kKiB;
  return o;
}

TEST(CachingAllocator, OpportunisticReuseOnAnotherStreamOnlyOnceTheOldWorkIsSeenComplete) {
  auto sim = Sim(256 * kMiB);
  auto cache = Cache(sim, OneBlockPerSegment(CrossStreamReuse::kOpportunistic));
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(512 * kKiB, s).value();
  ASSERT_TRUE(sim->LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kWrite, 1}}, 2'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(a).ok());
  // Reused or not, t's write must be ordered after s's kernel.
  Allocation on_t = cache->Allocate(512 * kKiB, t).value();
  ASSERT_TRUE(sim->MemsetAsync(on_t.ptr, 2, on_t.bytes, t).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(sim->SynchronizeStream(s).ok());
  Allocation after = cache->Allocate(512 * kKiB, t).value();
  EXPECT_TRUE(after.ptr == a.ptr || on_t.ptr == a.ptr) << "reusable once s's work completed";
  EXPECT_EQ(cache->stats().cross_stream_reuses, 1u);
  ASSERT_TRUE(sim->MemsetAsync(after.ptr, 3, after.bytes, t).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(on_t).ok());
  ASSERT_TRUE(cache->Deallocate(after).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// The free marker of a stream is recorded again as frees accumulate, so
// blocks freed long after the first one still become takeable by another
// stream once that stream's work is done (not only after a device sync).
TEST(CachingAllocator, LaterFreesOnAStreamBecomeTakeableByAnotherToo) {
  auto sim = Sim(256 * kMiB);
  auto cache = Cache(sim, OneBlockPerSegment(CrossStreamReuse::kOpportunistic));
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  std::vector<Allocation> on_t;
  for (int round = 1; round <= 3; ++round) {
    // Several blocks freed on s, s's work then done.
    std::vector<Allocation> blocks;
    for (int i = 0; i < 5; ++i) blocks.push_back(cache->Allocate(512 * kKiB, s).value());
    for (const Allocation& b : blocks) {
      ASSERT_TRUE(sim->MemsetAsync(b.ptr, round, b.bytes, s).ok());
      ASSERT_TRUE(cache->Deallocate(b).ok());
    }
    ASSERT_TRUE(sim->SynchronizeStream(s).ok());
    const std::uint64_t mallocs = sim->Accounting().calls_to(BackendOp::kMalloc);
    on_t.push_back(cache->Allocate(512 * kKiB, t).value());
    EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), mallocs)
        << "round " << round << ": a block freed on s was takeable";
    EXPECT_EQ(cache->stats().cross_stream_reuses, static_cast<std::uint64_t>(round));
    ASSERT_TRUE(sim->MemsetAsync(on_t.back().ptr, 9, on_t.back().bytes, t).ok());
  }
  ExpectNoStreamOrderViolation(*sim);
  for (const Allocation& a : on_t) ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, FollowEventsReuseIsOrderedAfterTheOldStreamsWork) {
  auto sim = Sim();
  auto cache = Cache(sim, OneBlockPerSegment(CrossStreamReuse::kFollowEvents));
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(512 * kKiB, s).value();
  ASSERT_TRUE(sim->LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kWrite, 1}}, 1'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(a).ok());
  Allocation b = cache->Allocate(512 * kKiB, t).value();
  EXPECT_EQ(b.ptr, a.ptr) << "reused at once, t made to wait on the device";
  ASSERT_TRUE(sim->MemsetAsync(b.ptr, 2, b.bytes, t).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(b).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// Bug: a block recorded on stream B and freed on B waited for B only; its
// allocation stream A (still running) was forgotten, and B reused it at once.
TEST(CachingAllocator, AFreeOnARecordedStreamStillWaitsForTheAllocationStream) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Stream a_stream = sim->CreateStream(0).value();
  Stream b_stream = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(256 * kKiB, a_stream).value();
  ASSERT_TRUE(sim->MemsetAsync(a.ptr, 1, a.bytes, a_stream).ok());
  Event written = sim->CreateEvent(0).value();
  ASSERT_TRUE(sim->RecordEvent(written, a_stream).ok());
  ASSERT_TRUE(sim->StreamWaitEvent(b_stream, written).ok());
  ASSERT_TRUE(sim->LaunchKernel(b_stream, {{a.ptr, a.bytes, AccessMode::kRead, 0}}).ok());
  ASSERT_TRUE(cache->RecordStream(a, b_stream).ok());
  // A keeps reading after B is done with it.
  ASSERT_TRUE(
      sim->LaunchKernel(a_stream, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 2'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(a, b_stream).ok());
  Allocation next = cache->Allocate(256 * kKiB, b_stream).value();
  ASSERT_TRUE(sim->MemsetAsync(next.ptr, 2, next.bytes, b_stream).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(next).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyEvent(written).ok());
  ASSERT_TRUE(sim->DestroyStream(a_stream).ok());
  ASSERT_TRUE(sim->DestroyStream(b_stream).ok());
}

TEST(CachingAllocator, ABlockRecordedOnSeveralStreamsWaitsForEveryOneOfThem) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  Stream quick = sim->CreateStream(0).value();
  Stream slow = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(256 * kKiB, s).value();
  ASSERT_TRUE(sim->Memset(a.ptr, 1, a.bytes).ok());
  for (Stream u : {quick, slow}) ASSERT_TRUE(cache->RecordStream(a, u).ok());
  ASSERT_TRUE(sim->LaunchKernel(quick, {{a.ptr, a.bytes, AccessMode::kRead, 0}}).ok());
  ASSERT_TRUE(
      sim->LaunchKernel(slow, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 200'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(a, s).ok());
  ASSERT_TRUE(sim->SynchronizeStream(quick).ok());  // the first event is complete, the second not
  Allocation next = cache->Allocate(256 * kKiB, s).value();
  ASSERT_TRUE(sim->MemsetAsync(next.ptr, 2, next.bytes, s).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(next).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  for (Stream u : {s, quick, slow}) ASSERT_TRUE(sim->DestroyStream(u).ok());
}

TEST(CachingAllocator, WhenNoEventCanBeRecordedAFreeWaitsOnTheHostInstead) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  auto cache = Cache(faulty);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(256 * kKiB, s).value();
  ASSERT_TRUE(sim->Memset(a.ptr, 1, a.bytes).ok());
  ASSERT_TRUE(cache->RecordStream(a, t).ok());
  ASSERT_TRUE(sim->LaunchKernel(t, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 2'000'000).ok());
  faulty->AddRule(FaultRule::EveryNth(BackendOp::kEventRecord, 1, FaultAction::kReturnError));
  ASSERT_TRUE(cache->Deallocate(a, s).ok());
  faulty->ClearRules();
  EXPECT_GE(sim->Accounting().calls_to(BackendOp::kStreamSynchronize), 1u);
  Allocation next = cache->Allocate(256 * kKiB, s).value();
  EXPECT_EQ(next.ptr, a.ptr) << "t was waited for on the host: the block is free at once";
  ASSERT_TRUE(sim->MemsetAsync(next.ptr, 2, next.bytes, s).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(next).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, FollowEventsReusesAtOnceButOrdersTheNewStreamAfterTheOld) {
  auto sim = Sim(256 * kMiB, SlowCopies());
  auto cache = Cache(sim);  // kFollowEvents is the default
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(256 * kKiB, s).value();
  std::vector<unsigned char> ones(256 * kKiB, 1);
  ASSERT_TRUE(sim->MemcpyAsync(a.ptr, ones.data(), ones.size(), CopyKind::kHostToDevice, s).ok());
  ASSERT_TRUE(cache->Deallocate(a).ok());
  Allocation b = cache->Allocate(256 * kKiB, t).value();
  EXPECT_EQ(b.ptr, a.ptr) << "reused at once";
  ASSERT_TRUE(sim->MemsetAsync(b.ptr, 2, 256 * kKiB, t).ok());
  std::vector<unsigned char> seen(256 * kKiB);
  ASSERT_TRUE(sim->MemcpyAsync(seen.data(), b.ptr, seen.size(), CopyKind::kDeviceToHost, t).ok());
  ASSERT_TRUE(sim->SynchronizeStream(t).ok());
  EXPECT_EQ(seen, std::vector<unsigned char>(256 * kKiB, 2))
      << "t's memset ran after s's slow copy, not before";
  ASSERT_TRUE(cache->Deallocate(b).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// Found by the stress campaign: a block taken from another stream and split
// left its remainder unmerged beside a free block of the new stream.
TEST(CachingAllocator, RemainderOfABlockTakenFromAnotherStreamMergesWithItsNewNeighbour) {
  auto sim = Sim();
  auto cache = Cache(sim);
  const Stream s = S0();
  const Stream t = sim->CreateStream(0).value();
  Allocation q1 = cache->Allocate(64 * kKiB, s).value();
  Allocation q2 = cache->Allocate(8 * kKiB, s).value();
  ASSERT_TRUE(cache->Deallocate(q2, t).ok());  // q2 now belongs to t
  ASSERT_TRUE(cache->Deallocate(q1, s).ok());  // [q1 free on s | q2 free on t | rest on s]
  ExpectConsistent(*cache);
  Allocation x = cache->Allocate(16 * kKiB, t).value();  // t takes q1 and splits it
  EXPECT_EQ(x.ptr, q1.ptr);
  ExpectConsistent(*cache);
  const MemorySnapshot snap = cache->Snapshot();
  ASSERT_GE(snap.segments[0].blocks.size(), 2u);
  EXPECT_EQ(snap.segments[0].blocks[1].size, 56 * kKiB) << "48 KiB remainder + q2's 8 KiB";
  ASSERT_TRUE(cache->Deallocate(x).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// The fallback host wait used to run under the allocator's lock, so one free
// whose event could not be recorded stalled every thread of the device.
TEST(CachingAllocator, AFreeWaitingOnTheHostDoesNotHoldTheAllocatorsLock) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  auto cache = Cache(faulty);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(64 * kKiB, s).value();
  ASSERT_TRUE(cache->RecordStream(a, t).ok());
  std::atomic<bool> freed{false};
  {
    SimStreamGate held = sim->HoldStream(t).value();  // t's work cannot finish yet
    faulty->AddRule(FaultRule::EveryNth(BackendOp::kEventRecord, 1, FaultAction::kReturnError));
    std::thread freeing([&] {
      EXPECT_TRUE(cache->Deallocate(a, s).ok());  // must wait for t on the host
      freed = true;
    });
    while (sim->Accounting().calls_to(BackendOp::kStreamSynchronize) == 0) {
      std::this_thread::yield();  // the free is now waiting on the host
    }
    // Another thread uses the allocator meanwhile; with the lock held it
    // would block until the gate opens.
    std::atomic<bool> served{false};
    std::thread other([&] {
      Allocation b = cache->Allocate(4 * kKiB, s).value();
      EXPECT_TRUE(cache->Deallocate(b).ok());
      served = true;
    });
    for (int i = 0; i < 2000 && !served; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_TRUE(served) << "the allocator stayed locked while a free waited on the host";
    EXPECT_FALSE(freed) << "the free went ahead before t's work was done";
    held.Open();
    other.join();
    freeing.join();
  }
  faulty->ClearRules();
  EXPECT_TRUE(freed);
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// What the out-of-memory path really guarantees: live allocations and the
// allocated figures are untouched; cached free memory may have been given
// back to the device (and free neighbours merged) on the way to failing.
TEST(CachingAllocator, AFailedAllocationKeepsAllocationsButMayHaveReleasedCache) {
  auto sim = Sim(64 * kMiB);
  auto cache = Cache(sim);
  // Requests of 10 MiB and more get segments of their own (caching_options.h).
  Allocation kept = cache->Allocate(12 * kMiB).value();
  std::vector<unsigned char> pattern(kept.bytes, 0x3C);
  ASSERT_TRUE(sim->Memcpy(kept.ptr, pattern.data(), kept.bytes, CopyKind::kHostToDevice).ok());
  Allocation cached = cache->Allocate(14 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(cached).ok());  // a whole free segment, cached
  const MemoryStats before = cache->stats();
  ASSERT_GT(before.reserved_bytes.current, before.allocated_bytes.current) << "memory is cached";
  absl::StatusOr<Allocation> too_big = cache->Allocate(60 * kMiB);
  ASSERT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  const MemoryStats after = cache->stats();
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(after.active_blocks.current, before.active_blocks.current);
  EXPECT_LT(after.reserved_bytes.current, before.reserved_bytes.current)
      << "the cache was released trying to make room";
  std::vector<unsigned char> seen(kept.bytes);
  ASSERT_TRUE(sim->Memcpy(seen.data(), kept.ptr, kept.bytes, CopyKind::kDeviceToHost).ok());
  EXPECT_EQ(seen, pattern) << "the live allocation is intact";
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->Deallocate(kept).ok());
}

// EmptyCache merges free neighbours of different streams; only once the
// device is idle may it, or the merged block carries one stream's label over
// memory another stream's queued work still touches.
TEST(CachingAllocator, EmptyCacheMergesAcrossStreamsOnlyAfterTheDeviceIsIdle) {
  auto sim = Sim();
  auto cache = Cache(sim);
  const Stream s = sim->CreateStream(0).value();
  const Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(256 * kKiB, s).value();
  Allocation b = cache->Allocate(256 * kKiB, t).value();  // a's neighbour in the small pool
  ASSERT_TRUE(sim->LaunchKernel(t, {{b.ptr, b.bytes, AccessMode::kWrite, 1}}, 2'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(b).ok());  // on t, its kernel still queued
  ASSERT_TRUE(cache->Deallocate(a).ok());  // on s
  ASSERT_TRUE(cache->EmptyCache(/*keep_bytes=*/std::size_t{1} << 40).ok());  // merge, keep all
  Allocation whole = cache->Allocate(1 * kMiB, s).value();  // may span b's bytes
  ASSERT_TRUE(sim->MemsetAsync(whole.ptr, 2, whole.bytes, s).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(whole).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, NoCrossStreamPolicyKeepsBlocksWithTheirStream) {
  auto sim = Sim();
  CachingOptions o;
  o.cross_stream = CrossStreamReuse::kNone;
  auto cache = Cache(sim, o);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(64 * kKiB, s).value();
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_TRUE(sim->SynchronizeStream(s).ok());
  Allocation b = cache->Allocate(64 * kKiB, t).value();
  EXPECT_NE(b.ptr, a.ptr);
  ASSERT_TRUE(cache->Deallocate(b).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, 0);
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, RecordStreamDelaysReuseUntilThatStreamFinishes) {
  auto sim = Sim(256 * kMiB, SlowCopies());
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(512 * kKiB, s).value();
  ASSERT_TRUE(cache->RecordStream(a, t).ok());
  SlowStream busy(*sim, t, a, 30);
  ASSERT_TRUE(cache->Deallocate(a).ok());
  EXPECT_EQ(cache->Snapshot().segments[0].blocks[0].state, BlockState::kPendingEvents);
  Allocation b = cache->Allocate(512 * kKiB, s).value();
  EXPECT_NE(b.ptr, a.ptr) << "t may still be using the block";
  ASSERT_TRUE(sim->SynchronizeStream(t).ok());
  Allocation c = cache->Allocate(512 * kKiB, s).value();
  EXPECT_EQ(c.ptr, a.ptr);
  ExpectConsistent(*cache);
  ASSERT_TRUE(cache->Deallocate(b).ok());
  ASSERT_TRUE(cache->Deallocate(c).ok());
  EXPECT_FALSE(cache->RecordStream(c, t).ok()) << "not live any more";
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// Bug: a block a peer device's kernel still read was reused as soon as it
// was freed (RecordStream refused the peer's stream, or recorded the wait
// with an event of the wrong device).
TEST(CachingAllocator, AFreeWaitsForAPeerDevicesStreamNamedByRecordStream) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 256 * kMiB));
  auto cache = Cache(sim);
  const Stream own = sim->CreateStream(0).value();
  const Stream peer = sim->CreateStream(1).value();
  Allocation a = cache->Allocate(512 * kKiB, own).value();
  // Device 1's kernel reads device 0's memory: only through peer access.
  EXPECT_FALSE(sim->LaunchKernel(peer, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 1000).ok());
  ASSERT_TRUE(sim->EnablePeerAccess(1, 0).ok());
  Event ready = sim->CreateEvent(0).value();
  ASSERT_TRUE(sim->RecordEvent(ready, own).ok());
  ASSERT_TRUE(sim->StreamWaitEvent(peer, ready).ok());
  ASSERT_TRUE(sim->LaunchKernel(peer, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 3'000'000).ok());
  ASSERT_TRUE(cache->RecordStream(a, peer).ok());
  ASSERT_TRUE(cache->Deallocate(a, own).ok());
  EXPECT_EQ(cache->Snapshot().segments[0].blocks[0].state, BlockState::kPendingEvents)
      << "waits for an event of device 1 (not on the host, not at all)";
  const std::uint64_t peer_events = sim->Accounting().calls_to(BackendOp::kEventCreate);
  Allocation b = cache->Allocate(512 * kKiB, own).value();
  ASSERT_TRUE(sim->LaunchKernel(own, {{b.ptr, b.bytes, AccessMode::kWrite, 0}}, 1000).ok());
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(cache->RecordStream(b, Stream{peer.handle, 7}).code(),
            absl::StatusCode::kInvalidArgument)
      << "a device the backend does not have";
  ASSERT_TRUE(cache->Deallocate(b, own).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(1).ok());
  // The peer's event is done with: it must not be pooled for our streams
  // (recorded on one, it would fail, and the next free would wait on the host).
  const Stream own2 = sim->CreateStream(0).value();
  Allocation c = cache->Allocate(4 * kMiB, own).value();
  ASSERT_TRUE(cache->RecordStream(c, own2).ok());
  ASSERT_TRUE(sim->LaunchKernel(own2, {{c.ptr, c.bytes, AccessMode::kRead, 0}}, 3'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(c, own).ok());
  bool pending = false;
  for (const SegmentSnapshot& seg : cache->Snapshot().segments) {
    for (const BlockSnapshot& blk : seg.blocks) pending |= blk.state == BlockState::kPendingEvents;
  }
  EXPECT_TRUE(pending) << "the free of c waits on an event of device 0";
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(own2).ok());
  EXPECT_GE(peer_events, 1u);
  ASSERT_TRUE(sim->DestroyEvent(ready).ok());
  cache.reset();
  ASSERT_TRUE(sim->DestroyStream(own).ok());
  ASSERT_TRUE(sim->DestroyStream(peer).ok());
  EXPECT_TRUE(sim->Accounting().AllReleased()) << "the peer's event destroyed, not pooled: "
                                               << sim->Accounting().Describe();
}

// Found by the stress runner: the default streams of two devices share a
// handle, and a peer's default stream named by RecordStream was taken for
// the block's own default stream and never waited for.
TEST(CachingAllocator, APeersDefaultStreamIsNotTakenForOurs) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 256 * kMiB));
  auto cache = Cache(sim);
  const Stream own = Stream::Default(0);
  const Stream peer = Stream::Default(1);
  ASSERT_EQ(own.handle, peer.handle);
  ASSERT_TRUE(sim->EnablePeerAccess(1, 0).ok());
  Allocation a = cache->Allocate(512 * kKiB, own).value();
  ASSERT_TRUE(sim->LaunchKernel(peer, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, 3'000'000).ok());
  ASSERT_TRUE(cache->RecordStream(a, peer).ok());
  ASSERT_TRUE(cache->Deallocate(a, own).ok());
  EXPECT_EQ(cache->Snapshot().segments[0].blocks[0].state, BlockState::kPendingEvents)
      << "device 1's default stream is still reading it";
  Allocation b = cache->Allocate(512 * kKiB, own).value();
  ASSERT_TRUE(sim->LaunchKernel(own, {{b.ptr, b.bytes, AccessMode::kWrite, 0}}, 1000).ok());
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  ASSERT_TRUE(cache->Deallocate(b, own).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(1).ok());
}

// Found on an H200 (a destroyed stream's handle crashes the driver): once a
// block is freed on a stream, the allocator never calls the runtime with that
// stream again, yet reuse on another stream still waits for its work.
TEST(CachingAllocator, ReuseAfterTheFreeingStreamIsDestroyedNeverTouchesItsHandle) {
  for (CrossStreamReuse policy : {CrossStreamReuse::kFollowEvents, CrossStreamReuse::kOpportunistic}) {
    auto sim = Sim();
    CachingOptions o;
    o.cross_stream = policy;
    auto cache = Cache(sim, o);
    Stream t = sim->CreateStream(0).value();
    for (int round = 0; round < 12; ++round) {
      Stream s = sim->CreateStream(0).value();
      Allocation a = cache->Allocate(512 * kKiB, s).value();
      ASSERT_TRUE(sim->LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kWrite, 1}}, 50'000, "w").ok());
      ASSERT_TRUE(cache->Deallocate(a, s).ok());
      ASSERT_TRUE(sim->DestroyStream(s).ok());  // its work may still run
      Allocation b = cache->Allocate(512 * kKiB, t).value();
      ASSERT_TRUE(sim->LaunchKernel(t, {{b.ptr, b.bytes, AccessMode::kWrite, 2}}, 1'000, "w").ok());
      ASSERT_TRUE(cache->Deallocate(b, t).ok());
    }
    ASSERT_TRUE(sim->SynchronizeStream(t).ok());
    ASSERT_TRUE(cache->EmptyCache().ok());
    const absl::Status ordered = harness::CheckStreamOrder(*sim);
    EXPECT_TRUE(ordered.ok()) << CrossStreamReuseName(policy) << ": " << ordered;
    ASSERT_TRUE(sim->DestroyStream(t).ok());
  }
}

// The remainder of a block taken from stream S by stream T belongs to T,
// and is as if freed on T only now: a third stream U may take it only after a
// marker T records later (one recorded before T waited for S would let U's
// work overlap S's).
TEST(CachingAllocator, TheRemainderOfATakenBlockWaitsForItsNewStreamsNextMarker) {
  auto sim = Sim();
  auto cache = Cache(sim);  // kFollowEvents
  const Stream s = sim->CreateStream(0).value();
  const Stream t = sim->CreateStream(0).value();
  const Stream u = sim->CreateStream(0).value();
  constexpr std::size_t kBig = 12 * kMiB;  // its own segment: no fresh remainder anywhere
  // T gets a recorded marker, then holds its only block.
  Allocation x = cache->Allocate(kBig, t).value();
  ASSERT_TRUE(cache->Deallocate(x, t).ok());
  Allocation x2 = cache->Allocate(kBig, t).value();
  // S writes a block for a long time and frees it.
  Allocation b = cache->Allocate(kBig, s).value();
  ASSERT_TRUE(sim->LaunchKernel(s, {{b.ptr, b.bytes, AccessMode::kWrite, 1}}, 50'000'000, "w").ok());
  ASSERT_TRUE(cache->Deallocate(b, s).ok());
  // T takes the front of it (waiting for S's marker); the rest stays free on T.
  Allocation front = cache->Allocate(4 * kMiB, t).value();
  EXPECT_EQ(front.ptr, b.ptr) << "taken from S";
  // U must not take the rest on T's older marker.
  Allocation rest = cache->Allocate(8 * kMiB, u).value();
  ASSERT_TRUE(sim->LaunchKernel(u, {{rest.ptr, rest.bytes, AccessMode::kWrite, 2}}, 1'000, "w").ok());
  const absl::Status ordered = harness::CheckStreamOrder(*sim);
  EXPECT_TRUE(ordered.ok()) << ordered;
  for (auto [a, on] : {std::pair{rest, u}, std::pair{front, t}, std::pair{x2, t}}) {
    ASSERT_TRUE(cache->Deallocate(a, on).ok());
  }
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  for (Stream x : {s, t, u}) ASSERT_TRUE(sim->DestroyStream(x).ok());
}

// An adaptor that synchronised the device frees with DeallocateAfterSync:
// no stream is named (its own may be gone), the block is at once takeable by
// any stream, and bad input is refused like any free.
TEST(CachingAllocator, DeallocateAfterSyncNamesNoStreamAndRefusesBadInput) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  const Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(12 * kMiB, s).value();
  int on_stack = 0;
  EXPECT_EQ(cache->DeallocateAfterSync(Allocation{&on_stack, 4, s}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->DeallocateAfterSync(Allocation{a.ptr, a.bytes + 1, s}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->stats().allocated_bytes.current, static_cast<std::int64_t>(12 * kMiB));
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(cache->DeallocateAfterSync(a).ok());
  Allocation b = cache->Allocate(12 * kMiB, t).value();
  EXPECT_EQ(b.ptr, a.ptr) << "nothing queued on it: another stream takes it at once";
  ASSERT_TRUE(cache->Deallocate(b, t).ok());
  const absl::Status ordered = harness::CheckStreamOrder(*sim);
  EXPECT_TRUE(ordered.ok()) << ordered;
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, PendingEventsHaveNoHeadOfLineBlocking) {
  auto sim = Sim(256 * kMiB, SlowCopies());
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  Stream slow = sim->CreateStream(0).value();
  Stream fast = sim->CreateStream(0).value();
  Allocation first = cache->Allocate(4 * kMiB, s).value();   // waits on the slow stream
  Allocation second = cache->Allocate(2 * kMiB, s).value();  // waits on the fast stream
  ASSERT_TRUE(cache->RecordStream(first, slow).ok());
  ASSERT_TRUE(cache->RecordStream(second, fast).ok());
  SlowStream busy(*sim, slow, first, 200);
  ASSERT_TRUE(cache->Deallocate(first).ok());
  ASSERT_TRUE(cache->Deallocate(second).ok());
  ASSERT_TRUE(sim->SynchronizeStream(fast).ok());
  Allocation again = cache->Allocate(2 * kMiB, s).value();
  EXPECT_EQ(again.ptr, second.ptr) << "freed although an earlier free still waits";
  ASSERT_TRUE(cache->Deallocate(again).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  for (Stream x : {s, slow, fast}) ASSERT_TRUE(sim->DestroyStream(x).ok());
}

TEST(CachingAllocator, OutOfMemoryReleasesCachedSegmentsAndRetries) {
  auto sim = Sim(48 * kMiB);
  auto cache = Cache(sim);
  Allocation a = cache->Allocate(12 * kMiB).value();
  Allocation b = cache->Allocate(14 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_TRUE(cache->Deallocate(b).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(26 * kMiB));
  Allocation c = cache->Allocate(30 * kMiB).value();  // only fits once the cache is flushed
  EXPECT_GE(cache->stats().cache_flushes, 1u);
  EXPECT_EQ(cache->stats().oom_events, 0u);
  ASSERT_TRUE(cache->Deallocate(c).ok());
  ExpectConsistent(*cache);
}

// The out-of-memory ladder waits for blocks still pending other streams'
// work: once it completes, their memory is free to satisfy the request.
TEST(CachingAllocator, OutOfMemoryWaitsForBlocksPendingOtherStreamsAndRetries) {
  auto sim = Sim(64 * kMiB, SlowCopies());
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation a = cache->Allocate(40 * kMiB, s).value();
  ASSERT_TRUE(cache->RecordStream(a, t).ok());
  SlowStream busy(*sim, t, a, 20);  // t's copy into `a` runs ~20 ms
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_EQ(cache->Snapshot().segments[0].blocks[0].state, BlockState::kPendingEvents);
  // Only `a`'s memory can hold another 40 MiB on this 64 MiB device.
  absl::StatusOr<Allocation> b = cache->Allocate(40 * kMiB, s);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(sim->MemsetAsync(b->ptr, 1, b->bytes, s).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->Deallocate(*b).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, OutOfMemoryErrorSaysWhereTheMemoryIs) {
  auto sim = Sim(8 * kMiB);
  auto cache = Cache(sim);
  std::vector<Allocation> small;
  for (int i = 0; i < 4; ++i) small.push_back(cache->Allocate(1 * kMiB).value());
  ASSERT_TRUE(cache->Deallocate(small[0]).ok());
  ASSERT_TRUE(cache->Deallocate(small[2]).ok());
  const MemoryStats before = cache->stats();
  absl::StatusOr<Allocation> big = cache->Allocate(7 * kMiB);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(big.status().message());
  for (const char* part : {"out of memory on device 0", "tried to allocate 7340032 bytes",
                           "too small for this request", "largest contiguous free block",
                           "the device reports"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << part << " missing from: " << msg;
  }
  EXPECT_EQ(cache->stats().oom_events, before.oom_events + 1);
  EXPECT_EQ(cache->stats().allocated_bytes.current, before.allocated_bytes.current);
  ASSERT_TRUE(cache->Deallocate(small[1]).ok());
  ASSERT_TRUE(cache->Deallocate(small[3]).ok());
  ExpectConsistent(*cache);
}

TEST(CachingAllocator, OomCallbackMayFreeMemoryAndTheAllocationIsRetried) {
  auto sim = Sim(24 * kMiB);
  auto cache = Cache(sim);
  Allocation hog = cache->Allocate(20 * kMiB).value();
  std::atomic<int> calls{0};
  cache->AddOomCallback([&](const OomEvent& e) {
    ++calls;
    EXPECT_EQ(e.device, 0);
    return cache->Deallocate(hog).ok() && cache->EmptyCache().ok();  // re-enters: no lock held
  });
  absl::StatusOr<Allocation> a = cache->Allocate(16 * kMiB);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(calls.load(), 1);
  ASSERT_TRUE(cache->Deallocate(*a).ok());
}

// Each inconsistent option, alone, is refused by Create naming the pool it
// breaks; the defaults and a consistent custom set are accepted.
TEST(CachingAllocator, EachInconsistentOptionAloneIsRefused) {
  struct Case {
    const char* what;
    std::function<void(CachingOptions&)> set;
    const char* names;
  };
  const std::vector<Case> cases = {
      {"min block not a power of two", [](CachingOptions& o) { o.min_block_bytes = 768; }, "min_block_bytes"},
      {"min block under the alignment", [](CachingOptions& o) { o.min_block_bytes = 128; }, "min_block_bytes"},
      {"small max under the min block", [](CachingOptions& o) { o.small_request_max = 256; }, "small pool"},
      {"small segment under the small max",
       [](CachingOptions& o) { o.small_segment_bytes = 512 * kKiB; }, "small pool"},
      {"small segment not a multiple of the min block",
       [](CachingOptions& o) { o.small_segment_bytes = (2 << 20) + 256; }, "small pool"},
      {"large rounding zero", [](CachingOptions& o) { o.large_segment_round = 0; }, "large"},
      {"large rounding not a multiple of the min block",
       [](CachingOptions& o) { o.large_segment_round = (2 << 20) + 256; }, "large"},
      {"large segment under its own-segment minimum",
       [](CachingOptions& o) { o.large_segment_bytes = 8 << 20; }, "large"},
      {"large segment not a multiple of the min block",
       [](CachingOptions& o) { o.large_segment_bytes = (20 << 20) + 256; }, "large"},
      {"gc threshold below 0", [](CachingOptions& o) { o.gc_threshold = -0.01; }, "gc_threshold"},
      {"gc threshold above 1", [](CachingOptions& o) { o.gc_threshold = 1.01; }, "gc_threshold"},
  };
  for (const Case& c : cases) {
    CachingOptions o;
    c.set(o);
    const absl::Status st = o.Validate();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << st;
    EXPECT_NE(st.message().find(c.names), absl::string_view::npos) << c.what << ": " << st;
    EXPECT_FALSE(CachingAllocator::Create(Sim(), 0, o).ok()) << c.what;
  }
  EXPECT_TRUE(CachingOptions{}.Validate().ok());
  CachingOptions custom;
  custom.min_block_bytes = 1024;
  custom.small_request_max = 1024;
  custom.small_segment_bytes = 1024;
  custom.large_segment_round = 1024;
  custom.large_request_own_segment_min = 4096;
  custom.large_segment_bytes = 4096;
  custom.gc_threshold = 1.0;
  EXPECT_TRUE(custom.Validate().ok()) << custom.Validate();
  custom.gc_threshold = 0.0;
  EXPECT_TRUE(custom.Validate().ok()) << custom.Validate() << ": every bound met with equality";
}

TEST(CachingAllocator, AbsurdRequestsFailFastAndTouchNothing) {
  auto sim = Sim(64 * kMiB);
  auto cache = Cache(sim);
  const std::uint64_t calls_before = sim->Accounting().calls_to(BackendOp::kMalloc);
  for (std::size_t bytes : {65 * kMiB, std::size_t{1} << 62, ~std::size_t{0}}) {
    absl::StatusOr<Allocation> a = cache->Allocate(bytes);
    ASSERT_FALSE(a.ok());
    EXPECT_NE(a.status().message().find("can never be satisfied"), absl::string_view::npos);
  }
  EXPECT_FALSE(cache->Allocate(0).ok());
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), calls_before);
  EXPECT_EQ(cache->stats().reserved_bytes.current, 0);
}

TEST(CachingAllocator, BadFreesAreRejectedAndChangeNothing) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 64 * kMiB));
  auto cache = Cache(sim);
  Allocation a = cache->Allocate(4 * kKiB).value();
  const MemoryStats before = cache->stats();
  int local = 0;
  EXPECT_EQ(cache->Deallocate(Allocation{&local, 4, S0()}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->Deallocate(Allocation{static_cast<char*>(a.ptr) + 512, 512, S0()}).code(),
            absl::StatusCode::kInvalidArgument)
      << "interior pointer";
  EXPECT_EQ(cache->Deallocate(Allocation{a.ptr, 8 * kKiB, S0()}).code(),
            absl::StatusCode::kInvalidArgument)
      << "wrong size";
  EXPECT_EQ(cache->Deallocate(a, Stream::Default(1)).code(), absl::StatusCode::kInvalidArgument)
      << "stream of another device";
  EXPECT_EQ(cache->Deallocate(Allocation{nullptr, 0, S0()}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->stats().allocated_bytes.current, before.allocated_bytes.current);
  ASSERT_TRUE(cache->Deallocate(a).ok());
  absl::Status twice = cache->Deallocate(a);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.message().find("already freed"), absl::string_view::npos);
  EXPECT_EQ(cache->Allocate(64, Stream::Default(1)).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "allocation for another device";
  ExpectConsistent(*cache);
}

TEST(CachingAllocator, EmptyCacheReleasesLeastRecentlyUsedFirstAndHonoursKeepBytes) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Allocation older = cache->Allocate(12 * kMiB).value();
  Allocation newer = cache->Allocate(12 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(newer).ok());
  ASSERT_TRUE(cache->Deallocate(older).ok());
  Allocation touch = cache->Allocate(12 * kMiB).value();  // reuses one: it becomes most recent
  ASSERT_TRUE(cache->Deallocate(touch).ok());
  const void* recent = touch.ptr;
  ASSERT_TRUE(cache->EmptyCache(/*keep_bytes=*/12 * kMiB).ok());
  MemorySnapshot snap = cache->Snapshot();
  ASSERT_EQ(snap.segments.size(), 1u);
  EXPECT_EQ(reinterpret_cast<const void*>(snap.segments[0].address), recent)
      << "the least recently used segment went first";
  ASSERT_TRUE(cache->EmptyCache().ok());
  EXPECT_TRUE(cache->Snapshot().segments.empty());
  // Untouched since they were made: the segment made last was used last and
  // stays (the segment list itself runs newest first, so an order of
  // creation would give the other answer than an order of use above).
  Allocation first = cache->Allocate(12 * kMiB).value();
  Allocation second = cache->Allocate(12 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(first).ok());
  ASSERT_TRUE(cache->Deallocate(second).ok());
  ASSERT_TRUE(cache->EmptyCache(/*keep_bytes=*/12 * kMiB).ok());
  snap = cache->Snapshot();
  ASSERT_EQ(snap.segments.size(), 1u);
  EXPECT_EQ(reinterpret_cast<const void*>(snap.segments[0].address), second.ptr)
      << "the segment used first went first";
  ASSERT_TRUE(cache->EmptyCache().ok());
  EXPECT_EQ(sim->Accounting().devices[0].device_bytes, 0u);
}

TEST(CachingAllocator, ReservedLimitIsAnOutOfMemoryBoundary) {
  auto sim = Sim();
  auto cache = Cache(sim);
  ASSERT_TRUE(cache->SetReservedLimit(24 * kMiB).ok());
  Allocation a = cache->Allocate(20 * kMiB).value();
  absl::StatusOr<Allocation> b = cache->Allocate(8 * kMiB);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LE(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(24 * kMiB));
  ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_TRUE(cache->SetReservedLimit(4 * kMiB).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, 0) << "lowering the limit flushed the cache";
  // Found by the fuzzer: live blocks hold the allocator over a lowered
  // limit; what they free must not stay cached above it.
  ASSERT_TRUE(cache->SetReservedLimit(0).ok());
  Allocation x = cache->Allocate(12 * kMiB).value();
  Allocation y = cache->Allocate(12 * kMiB).value();
  ASSERT_TRUE(cache->SetReservedLimit(4 * kMiB).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(24 * kMiB));
  ASSERT_TRUE(cache->Deallocate(x).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(12 * kMiB));
  ASSERT_TRUE(cache->Deallocate(y).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, 0);
}

// A block whose other-stream work finishes while the allocator is over a
// lowered limit goes back to the device once that work is seen complete,
// not into the cache above the limit.
TEST(CachingAllocator, ABlockLeavingPendingEventsOverALoweredLimitIsReleased) {
  auto sim = Sim();
  auto cache = Cache(sim);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  // A live small block keeps its 2 MiB segment, so the request that later
  // sees t's work complete is served from it, with no new segment (whose own
  // limit check would hide a missing one).
  Allocation keep = cache->Allocate(4 * kKiB, s).value();
  Allocation a = cache->Allocate(12 * kMiB, s).value();
  ASSERT_TRUE(cache->RecordStream(a, t).ok());
  {
    SimStreamGate gate = sim->HoldStream(t).value();
    ASSERT_TRUE(sim->MemsetAsync(a.ptr, 1, a.bytes, t).ok());
    ASSERT_TRUE(cache->Deallocate(a).ok());
    ASSERT_TRUE(cache->SetReservedLimit(4 * kMiB).ok());
    EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(14 * kMiB))
        << "t's work still pending: the block cannot go yet";
  }
  ASSERT_TRUE(sim->SynchronizeStream(t).ok());
  const std::uint64_t mallocs = sim->Accounting().calls_to(BackendOp::kMalloc);
  Allocation small = cache->Allocate(4 * kKiB, s).value();  // sees t's work complete
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), mallocs) << "served from the cache";
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(2 * kMiB))
      << "the freed 12 MiB block must not stay cached over the limit";
  ASSERT_TRUE(cache->Deallocate(small).ok());
  ASSERT_TRUE(cache->Deallocate(keep).ok());
  ExpectNoStreamOrderViolation(*sim);
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// A new segment that brings the allocator exactly to its limit fits: the
// cache is not flushed for it.
TEST(CachingAllocator, ASegmentReachingTheLimitExactlyFlushesNothing) {
  auto sim = Sim();
  CachingOptions o;
  o.cross_stream = CrossStreamReuse::kNone;  // t cannot take s's cached block
  auto cache = Cache(sim, o);
  ASSERT_TRUE(cache->SetReservedLimit(24 * kMiB).ok());
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation x = cache->Allocate(12 * kMiB, s).value();  // its own 12 MiB segment
  ASSERT_TRUE(cache->Deallocate(x).ok());
  const MemoryStats before = cache->stats();
  Allocation y = cache->Allocate(12 * kMiB, t).value();  // 12 + 12 = the limit
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(24 * kMiB))
      << "the cached block stayed";
  EXPECT_EQ(cache->stats().cache_flushes, before.cache_flushes);
  ASSERT_TRUE(cache->Deallocate(y).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

// With expandable segments, a limit met exactly trims nothing: a free tail
// stays mapped until the allocator is really over the limit.
TEST(CachingAllocator, AnExpandableTailStaysWhenTheLimitIsMetExactly) {
  auto sim = Sim();
  CachingOptions o;
  o.expandable_segments = true;
  auto cache = Cache(sim, o);
  Allocation a = cache->Allocate(4 * kMiB).value();
  Allocation b = cache->Allocate(4 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(b).ok());  // a free tail at the end of the range
  const std::int64_t reserved = cache->stats().reserved_bytes.current;
  ASSERT_GT(reserved, static_cast<std::int64_t>(4 * kMiB));
  ASSERT_TRUE(cache->SetReservedLimit(static_cast<std::size_t>(reserved)).ok());
  EXPECT_EQ(cache->stats().reserved_bytes.current, reserved) << "at the limit, not over it";
  ASSERT_TRUE(cache->SetReservedLimit(static_cast<std::size_t>(reserved) - 1).ok());
  EXPECT_LT(cache->stats().reserved_bytes.current, reserved) << "over it: the tail goes";
  ASSERT_TRUE(cache->Deallocate(a).ok());
}

TEST(CachingAllocator, GarbageCollectionThresholdReleasesLruSegmentsBeforeGrowing) {
  auto sim = Sim(100 * kMiB);
  CachingOptions o;
  o.gc_threshold = 0.5;
  auto cache = Cache(sim, o);
  Allocation a = cache->Allocate(30 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(a).ok());
  Allocation b = cache->Allocate(40 * kMiB).value();  // 30 + 40 > 50: the cached 30 goes
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(40 * kMiB));
  EXPECT_GE(cache->stats().cache_flushes, 1u);
  ASSERT_TRUE(cache->Deallocate(b).ok());
}

TEST(CachingAllocator, MaxSplitSizeKeepsHugeBlocksWhole) {
  auto sim = Sim();
  CachingOptions o;
  o.max_split_bytes = 8 * kMiB;
  auto cache = Cache(sim, o);
  Allocation huge = cache->Allocate(40 * kMiB).value();
  ASSERT_TRUE(cache->Deallocate(huge).ok());
  Allocation small_large = cache->Allocate(3 * kMiB).value();
  EXPECT_NE(small_large.ptr, huge.ptr) << "a 3 MiB request does not carve the 40 MiB block";
  ASSERT_TRUE(cache->Deallocate(small_large).ok());
  ExpectConsistent(*cache);
  // A request of exactly the split limit is itself "huge": it may take a
  // cached block of its size freed on another stream (ordered after it).
  o.cross_stream = CrossStreamReuse::kFollowEvents;
  auto follow = Cache(sim, o);
  Stream s = sim->CreateStream(0).value();
  Stream t = sim->CreateStream(0).value();
  Allocation at_limit = follow->Allocate(8 * kMiB, s).value();
  ASSERT_TRUE(follow->Deallocate(at_limit).ok());
  const std::uint64_t mallocs = sim->Accounting().calls_to(BackendOp::kMalloc);
  Allocation again = follow->Allocate(8 * kMiB, t).value();
  EXPECT_EQ(again.ptr, at_limit.ptr);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), mallocs);
  ASSERT_TRUE(follow->Deallocate(again).ok());
  ASSERT_TRUE(follow->EmptyCache().ok());
  // A block of exactly max_split_bytes (a whole 20 MiB large segment here) is
  // huge too: a smaller request from another stream never carves it.
  CachingOptions twenty = o;
  twenty.max_split_bytes = 20 * kMiB;
  auto exact = Cache(sim, twenty);
  Allocation whole = exact->Allocate(8 * kMiB, s).value();  // gets the unsplit 20 MiB block
  ASSERT_EQ(exact->Snapshot().segments[0].blocks.size(), 1u);
  ASSERT_EQ(exact->Snapshot().segments[0].blocks[0].size, 20 * kMiB);
  ASSERT_TRUE(exact->Deallocate(whole).ok());
  Allocation smaller = exact->Allocate(3 * kMiB, t).value();
  EXPECT_NE(smaller.ptr, whole.ptr) << "a block of max_split_bytes is not split";
  ASSERT_TRUE(exact->Deallocate(smaller).ok());
  ASSERT_TRUE(exact->EmptyCache().ok());
  ASSERT_TRUE(follow->EmptyCache().ok());
  ASSERT_TRUE(sim->DestroyStream(s).ok());
  ASSERT_TRUE(sim->DestroyStream(t).ok());
}

TEST(CachingAllocator, StatsAreExactAfterEveryOperation) {
  auto sim = Sim();
  auto cache = Cache(sim);
  std::mt19937_64 rng(1234);
  std::vector<Allocation> live;
  harness::LiveSet shadow;
  for (int step = 0; step < 2000; ++step) {
    if (live.empty() || (live.size() < 64 && rng() % 3 != 0)) {
      const std::size_t bytes = 1 + rng() % (rng() % 4 == 0 ? 8 * kMiB : 64 * kKiB);
      Allocation a = cache->Allocate(bytes).value();
      ASSERT_TRUE(shadow.Add(a, cache->alignment()).ok());
      live.push_back(a);
    } else {
      const std::size_t i = rng() % live.size();
      ASSERT_TRUE(cache->Deallocate(live[i]).ok());
      ASSERT_TRUE(shadow.Remove(live[i]).ok());
      live[i] = live.back();
      live.pop_back();
    }
    if (step % 50 == 0) {
      ASSERT_TRUE(cache->EmptyCache(16 * kMiB).ok());
    }
    MemorySnapshot snap = cache->Snapshot();
    ASSERT_TRUE(harness::CheckSnapshot(snap).ok()) << "step " << step;
    ASSERT_TRUE(shadow.CheckAgainst(snap).ok()) << "step " << step;
  }
  // Per-pool counters add up to the totals.
  const MemoryStats total = cache->stats();
  const std::array<MemoryStats, 2> pools = cache->pool_stats();
  EXPECT_EQ(pools[0].allocated_bytes.current + pools[1].allocated_bytes.current,
            total.allocated_bytes.current);
  EXPECT_EQ(pools[0].reserved_bytes.current + pools[1].reserved_bytes.current,
            total.reserved_bytes.current);
  EXPECT_EQ(pools[0].cache_hits + pools[1].cache_hits, total.cache_hits);
  EXPECT_EQ(pools[0].segments.current + pools[1].segments.current, total.segments.current);
  EXPECT_GT(pools[0].reserved_bytes.current, 0) << "small pool used";
  EXPECT_GT(pools[1].reserved_bytes.peak, 0) << "large pool used";
  for (const Allocation& a : live) ASSERT_TRUE(cache->Deallocate(a).ok());
  ASSERT_TRUE(cache->EmptyCache().ok());
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

// A scenario that exercises new segments, splits, frees, release and reuse.
// `live` holds what is allocated whenever it returns, even on failure.
absl::Status Scenario(CachingAllocator& cache, std::vector<Allocation>* live) {
  auto allocate = [&](std::size_t bytes) -> absl::Status {
    absl::StatusOr<Allocation> a = cache.Allocate(bytes);
    if (!a.ok()) return a.status();
    live->push_back(*a);
    return absl::OkStatus();
  };
  auto free_last = [&]() -> absl::Status {
    absl::Status st = cache.Deallocate(live->back());
    if (st.ok()) live->pop_back();
    return st;
  };
  for (std::size_t bytes : {4 * kKiB, 3 * kMiB, 24 * kMiB}) {
    if (absl::Status st = allocate(bytes); !st.ok()) return st;
  }
  for (int i = 0; i < 2; ++i) {
    if (absl::Status st = free_last(); !st.ok()) return st;
  }
  if (absl::Status st = cache.EmptyCache(); !st.ok()) return st;
  for (std::size_t bytes : {100 * kKiB, 6 * kMiB, 16 * kMiB}) {
    if (absl::Status st = allocate(bytes); !st.ok()) return st;
  }
  return absl::OkStatus();
}

TEST(CachingAllocator, FaultSweepEveryBackendCallFailedOrThrownLeavesNoLeak) {
  // Count the calls of a clean run, then fail or throw at each one in turn.
  std::uint64_t calls = 0;
  {
    auto fp = std::make_shared<FailpointBackend>(Sim(), 1);
    auto cache = Cache(fp);
    std::vector<Allocation> live;
    ASSERT_TRUE(Scenario(*cache, &live).ok());
    calls = fp->total_calls();
    for (const Allocation& a : live) ASSERT_TRUE(cache->Deallocate(a).ok());
  }
  ASSERT_GE(calls, 8u) << "the scenario must reach the backend often enough to matter";
  for (FaultAction action : {FaultAction::kReturnError, FaultAction::kThrowBadAlloc,
                             FaultAction::kThrowRuntimeError, FaultAction::kThrowForeign}) {
    for (std::uint64_t k = 1; k <= calls; ++k) {
      auto sim = Sim();
      auto fp = std::make_shared<FailpointBackend>(sim, 1);
      auto cache = Cache(fp);
      FaultRule rule;
      rule.schedule = FaultRule::Schedule::kPredicate;
      rule.predicate = [k, n = std::make_shared<std::uint64_t>(0)](const CallInfo&) {
        return ++*n == k;
      };
      rule.action = action;
      fp->AddRule(rule);
      std::vector<Allocation> live;
      Scenario(*cache, &live).IgnoreError();
      fp->ClearRules();  // the clean-up below must not be faulted
      SCOPED_TRACE(testing::Message() << FaultActionName(action) << " at call " << k);
      ExpectConsistent(*cache);
      for (const Allocation& a : live) ASSERT_TRUE(cache->Deallocate(a).ok());
      ASSERT_TRUE(cache->EmptyCache().ok());
      cache.reset();
      EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
    }
  }
}

// What no failed call may change: the segments and every allocated block.
// (Any call first returns blocks whose pending events completed to the free
// pool, so free and pending blocks may differ where some were pending.)
std::string HeldMemory(const MemorySnapshot& snap) {
  std::string out;
  for (const SegmentSnapshot& seg : snap.segments) {
    out += absl::StrFormat("segment %#x+%d:", seg.address, seg.size);
    for (const BlockSnapshot& b : seg.blocks) {
      if (b.state == BlockState::kAllocated) {
        out += absl::StrFormat(" [%#x+%d requested %d stream %d]", b.address, b.size, b.requested,
                               b.stream.handle);
      }
    }
    out += "\n";
  }
  return out;
}

bool AnyPending(const MemorySnapshot& snap) {
  for (const SegmentSnapshot& seg : snap.segments) {
    for (const BlockSnapshot& b : seg.blocks) {
      if (b.state == BlockState::kPendingEvents) return true;
    }
  }
  return false;
}

// Runs a scenario that reaches every kind of metadata allocation (new
// segments, cache hits with splits, RecordStream, frees that wait on other
// streams, cross-stream reuse, expandable growth, EmptyCache) with the k-th
// allocation from the injected metadata resource failing. The operation that
// meets the failure must fail and change nothing, or succeed (where the
// allocator has a fallback); then it is retried and the scenario goes on.
// Returns how many allocations of the resource failed (0: k is past the end).
std::uint64_t RunWithMetadataFailureAt(std::uint64_t k, bool expandable) {
  auto sim = Sim();
  harness::FailingMemoryResource metadata;
  {
    CachingOptions options;
    options.expandable_segments = expandable;
    options.metadata_resource = &metadata;
    auto cache = Cache(sim, options);
    const Stream s1 = sim->CreateStream(0).value();
    const Stream s2 = sim->CreateStream(0).value();
    metadata.FailAt(k);
    // One step: the failing call leaves no trace; a retry without failures succeeds.
    auto step = [&](const char* what, auto op) {
      SCOPED_TRACE(testing::Message() << what << ", failure at allocation " << k
                                      << (expandable ? ", expandable" : ""));
      const MemorySnapshot before = cache->Snapshot();
      const std::uint64_t failed_before = metadata.failures();
      const std::size_t device_before = sim->Accounting().devices[0].device_bytes;
      absl::Status st = op();
      if (st.ok()) return;
      EXPECT_EQ(metadata.failures(), failed_before + 1) << "failed without an injected failure: " << st;
      EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
      const MemorySnapshot after = cache->Snapshot();
      if (AnyPending(before)) {
        EXPECT_EQ(HeldMemory(after), HeldMemory(before)) << "a failed call changed what is held";
        EXPECT_EQ(after.stats.allocated_bytes.current, before.stats.allocated_bytes.current);
        EXPECT_EQ(after.stats.reserved_bytes.current, before.stats.reserved_bytes.current);
      } else {
        EXPECT_EQ(after.ToJson(), before.ToJson()) << "a failed call changed the allocator";
      }
      EXPECT_EQ(sim->Accounting().devices[0].device_bytes, device_before) << "device memory leaked";
      ExpectConsistent(*cache);
      metadata.FailNone();
      st = op();
      EXPECT_TRUE(st.ok()) << "the retry failed: " << st;
    };
    Allocation a, b, c, d, e;
    auto alloc = [&](Allocation* out, std::size_t bytes, Stream s) {
      return [&cache, out, bytes, s]() -> absl::Status {
        absl::StatusOr<Allocation> r = cache->Allocate(bytes, s);
        if (r.ok()) *out = *r;
        return r.status();
      };
    };
    step("new segment", alloc(&a, 4 * kKiB, s1));
    step("cache hit with a split", alloc(&b, 8 * kKiB, s1));
    step("RecordStream", [&] { return cache->RecordStream(a, s2); });
    step("free waiting on another stream", [&] { return cache->Deallocate(a, s1); });
    step("large segment", alloc(&c, 3 * kMiB, s2));
    step("free on another stream", [&] { return cache->Deallocate(b, s2); });
    step("taken from another stream", alloc(&d, 4 * kKiB, s2));
    step("free", [&] { return cache->Deallocate(c, s2); });
    step("grown or new segment", alloc(&e, 30 * kMiB, s1));
    step("free after sync", [&] { return cache->DeallocateAfterSync(d); });
    step("free", [&] { return cache->Deallocate(e, s1); });
    step("EmptyCache", [&] { return cache->EmptyCache(); });
    metadata.FailNone();
    ExpectConsistent(*cache);
    EXPECT_EQ(cache->stats().allocated_bytes.current, 0);
    EXPECT_TRUE(cache->EmptyCache().ok());
    EXPECT_TRUE(sim->DestroyStream(s1).ok());
    EXPECT_TRUE(sim->DestroyStream(s2).ok());
  }
  EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "metadata leaked at k=" << k;
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
  return metadata.failures();
}

TEST(CachingAllocator, EveryMetadataAllocationFailureLeavesTheAllocatorAsItWas) {
  for (bool expandable : {false, true}) {
    std::uint64_t k = 1;
    while (RunWithMetadataFailureAt(k, expandable) > 0) {
      ASSERT_FALSE(HasFailure()) << "first failure at k=" << k;
      ++k;
    }
    // Every allocation the scenario makes was failed once: blocks, nodes,
    // segments, maps, event lists, an expandable range and its chunk lists.
    EXPECT_GE(k, 30u) << "the scenario must reach the metadata allocations it was written for";
  }
}

// Releasing never needs memory: the list of release candidates always has
// room for every segment. Bug: room reserved one segment short (or only
// once the list was already full), so with n segments and no host memory
// left, EmptyCache failed half-way and kept segments it meant to release.
TEST(CachingAllocator, EmptyCacheReleasesEverySegmentWithNoHostMemoryLeft) {
  for (int n = 1; n <= 8; ++n) {
    SCOPED_TRACE(testing::Message() << n << " segments");
    harness::FailingMemoryResource metadata;
    CachingOptions options;
    options.metadata_resource = &metadata;
    auto sim = Sim();
    {
      auto cache = Cache(sim, options);
      std::vector<Allocation> live;
      for (int i = 0; i < n; ++i) live.push_back(cache->Allocate(12 * kMiB).value());  // own segments
      ASSERT_EQ(cache->stats().segments.current, n);
      for (const Allocation& a : live) ASSERT_TRUE(cache->Deallocate(a).ok());
      metadata.FailAll();
      const absl::Status st = cache->EmptyCache();
      metadata.FailNone();
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(cache->stats().segments.current, 0);
      EXPECT_EQ(cache->stats().reserved_bytes.current, 0);
    }
    EXPECT_EQ(metadata.outstanding_bytes(), 0u);
  }
}

TEST(CachingAllocator, ARefusedAddressReservationGivesItsBookkeepingBack) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  harness::FailingMemoryResource metadata;
  {
    CachingOptions options;
    options.expandable_segments = true;
    options.metadata_resource = &metadata;
    auto cache = Cache(faulty, options);
    faulty->AddRule(FaultRule::NthCall(BackendOp::kVmReserve, 1, FaultAction::kReturnError));
    EXPECT_FALSE(cache->Allocate(8 * kKiB).ok());
    Allocation a = cache->Allocate(8 * kKiB).value();  // the next reservation works
    ASSERT_TRUE(cache->Deallocate(a).ok());
  }
  EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "the refused range's object was kept";
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

TEST(CachingAllocator, HostBookkeepingComesFromTheMetadataResourceAndAllReturns) {
  auto sim = Sim();
  harness::FailingMemoryResource metadata;
  {
    CachingOptions options;
    options.metadata_resource = &metadata;
    auto cache = Cache(sim, options);
    std::vector<Allocation> live;
    for (int i = 0; i < 200; ++i) live.push_back(cache->Allocate((i % 7 + 1) * 4 * kKiB).value());
    EXPECT_GT(metadata.outstanding_blocks(), 200u) << "each live block's bookkeeping is there";
    for (std::size_t i = 0; i < live.size(); i += 2) ASSERT_TRUE(cache->Deallocate(live[i]).ok());
    // Steady state: a free and an allocation of the same size reuse the
    // bookkeeping they have; the resource is not asked again.
    const std::uint64_t before = metadata.allocations();
    for (int round = 0; round < 50; ++round) {
      Allocation a = cache->Allocate(4 * kKiB).value();
      ASSERT_TRUE(cache->Deallocate(a).ok());
    }
    EXPECT_EQ(metadata.allocations(), before);
    metadata.FailAll();  // nor can it: allocating and freeing still work
    Allocation a = cache->Allocate(4 * kKiB).value();
    ASSERT_TRUE(cache->Deallocate(a).ok());
    metadata.FailNone();
    for (std::size_t i = 1; i < live.size(); i += 2) ASSERT_TRUE(cache->Deallocate(live[i]).ok());
  }
  EXPECT_EQ(metadata.outstanding_bytes(), 0u);
}

TEST(CachingAllocator, ConcurrentAllocateAndCrossThreadFreeKeepContentsAndBalance) {
  auto sim = Sim(512 * kMiB);
  auto cache = Cache(sim);
  constexpr int kThreads = 4;
  std::barrier start(kThreads);
  std::mutex handoff_mu;
  std::vector<std::pair<Allocation, std::uint64_t>> handoff;  // freed by another thread
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<std::pair<Allocation, std::uint64_t>> mine;
      start.arrive_and_wait();
      for (int i = 0; i < 300; ++i) {
        if (mine.size() < 8 || rng() % 2) {
          absl::StatusOr<Allocation> a = cache->Allocate(256 + rng() % (2 * kMiB));
          if (!a.ok()) { ++failures; continue; }
          const std::uint64_t seed = rng();
          if (!harness::WriteCookie(*sim, *a, seed, std::min<std::size_t>(a->bytes, 256)).ok()) ++failures;
          mine.emplace_back(*a, seed);
        } else {
          auto [a, seed] = mine.back();
          mine.pop_back();
          if (!harness::VerifyCookie(*sim, a, seed, std::min<std::size_t>(a.bytes, 256)).ok()) ++failures;
          if (rng() % 3 == 0) {
            std::lock_guard<std::mutex> lock(handoff_mu);
            handoff.emplace_back(a, seed);
          } else if (!cache->Deallocate(a).ok()) {
            ++failures;
          }
        }
        if (i % 50 == 0) {
          (void)cache->stats();  // concurrent readers
          std::lock_guard<std::mutex> lock(handoff_mu);
          for (auto& [a, seed] : handoff) {
            if (!harness::VerifyCookie(*sim, a, seed, std::min<std::size_t>(a.bytes, 256)).ok() ||
                !cache->Deallocate(a).ok()) {
              ++failures;
            }
          }
          handoff.clear();
        }
      }
      for (auto& [a, seed] : mine) {
        if (!cache->Deallocate(a).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& [a, seed] : handoff) ASSERT_TRUE(cache->Deallocate(a).ok());
  EXPECT_EQ(failures.load(), 0);
  ExpectConsistent(*cache);
  EXPECT_EQ(cache->stats().allocated_bytes.current, 0);
  ASSERT_TRUE(cache->EmptyCache().ok());
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

}  // namespace
}  // namespace gpualloc
