#include "allocator/pools/staging_buffer_pool.h"

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

// A segment per buffer, none cached: what the pool frees, the sim sees freed.
PinnedHostOptions Uncached() {
  PinnedHostOptions p;
  p.small_request_max = 0;
  p.large_segment_round = kPinnedBlockAlignment;
  p.cache_limit_bytes = 0;
  return p;
}

struct Env {
  explicit Env(SimOptions o = SimOptions::WithDevices(2, 64 << 20),
               PinnedHostOptions p = Uncached()) {
    sim = std::make_shared<SimBackend>(o);
    faulty = std::make_shared<FailpointBackend>(sim, 1);
    pinned = std::make_shared<PinnedHostAllocator>(faulty, p);
    cache = CachingAllocator::Create(sim, 0, {}).value();
  }
  void ExpectNothingRaced() {
    absl::Status st = sim->CheckStreamOrder();
    EXPECT_TRUE(st.ok()) << st;
  }
  std::shared_ptr<StagingBufferPool> Pool(StagingPoolOptions o = {}) {
    return StagingBufferPool::Create(pinned, 0, o).value();
  }
  std::shared_ptr<SimBackend> sim;
  std::shared_ptr<FailpointBackend> faulty;
  std::shared_ptr<PinnedHostAllocator> pinned;
  std::shared_ptr<CachingAllocator> cache;
};

TEST(StagingBufferPool, ReusesAReturnedBufferForAnySizeThatFitsAndCountsTheHitRate) {
  Env env;
  auto pool = env.Pool();
  void* first = nullptr;
  {
    StagingBuffer a = pool->Acquire(100).value();
    EXPECT_EQ(a.size(), 100u);
    EXPECT_EQ(a.capacity(), 4096u) << "rounded up to min_buffer_bytes";
    first = a.data();
  }
  StagingBuffer b = pool->Acquire(3000).value();
  EXPECT_EQ(b.data(), first) << "a size within the same capacity reuses the buffer";
  StagingBuffer c = pool->Acquire(5000).value();
  EXPECT_EQ(c.capacity(), 8192u) << "a power of two";
  EXPECT_NE(c.data(), first);
  StagingPoolStats st = pool->stats();
  EXPECT_EQ(st.acquires, 3u);
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 2u);
  EXPECT_EQ(st.in_use, 2u);
  EXPECT_DOUBLE_EQ(st.hit_rate(), 1.0 / 3.0);
  ASSERT_TRUE(b.Reset().ok());
  ASSERT_TRUE(c.Reset().ok());
  // The smallest idle buffer that fits, not the first one found.
  StagingBuffer d = pool->Acquire(10).value();
  EXPECT_EQ(d.data(), first);
  EXPECT_EQ(pool->stats().idle_buffers, 1u);
  EXPECT_EQ(pool->stats().idle_bytes, 8192u);
}

// Bug: a buffer returned while its readback was still queued was handed out
// again at once; the next owner's host writes raced the copy.
TEST(StagingBufferPool, ABufferReturnedWithItsCopyInFlightIsNotReusedBeforeTheCopyIsDone) {
  Env env;
  auto pool = env.Pool();
  const Stream s = env.sim->CreateStream(0).value();
  constexpr std::size_t n = 64 * 1024;
  DeviceBuffer dev = DeviceBuffer::Create(env.cache, n, s).value();
  StagingBuffer a = pool->Acquire(n).value();
  void* first = a.data();
  // Work ahead of the copy keeps it queued while the buffer changes hands.
  ASSERT_TRUE(env.sim->LaunchKernel(s, {{dev.data(), n, AccessMode::kWrite, 0}}, 2'000'000).ok());
  ASSERT_TRUE(a.ReadBack(Span(dev), 0, n, s).ok());
  ASSERT_TRUE(a.Reset().ok());
  StagingBuffer b = pool->Acquire(n).value();
  EXPECT_NE(b.data(), first) << "handed out with a copy into it still queued";
  EXPECT_GE(pool->stats().busy_skips, 1u);
  std::vector<unsigned char> ones(n, 1);
  ASSERT_TRUE(b.HostWrite(0, ones.data(), n).ok());
  absl::Status order = env.sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
  ASSERT_TRUE(env.sim->SynchronizeStream(s).ok());
  StagingBuffer c = pool->Acquire(n).value();
  EXPECT_EQ(c.data(), first) << "its copy is done: reusable";
  b.Reset().IgnoreError();
  c.Reset().IgnoreError();
  dev.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

TEST(StagingBufferPool, ReadBackAndUploadRoundTripThroughTheBuffer) {
  Env env;
  auto pool = env.Pool();
  const Stream s = env.sim->CreateStream(0).value();
  constexpr std::size_t n = 10000;
  DeviceBuffer dev = DeviceBuffer::Create(env.cache, n, s).value();
  std::vector<unsigned char> in(n);
  for (std::size_t i = 0; i < n; ++i) in[i] = static_cast<unsigned char>(i * 7 + 3);
  {
    StagingBuffer up = pool->Acquire(n).value();
    ASSERT_TRUE(up.HostWrite(0, in.data(), n).ok());
    ASSERT_TRUE(up.Upload(Span(dev), 0, n, s).ok());
  }  // back with the upload in flight
  StagingBuffer down = pool->Acquire(n).value();
  ASSERT_TRUE(down.ReadBack(Span(dev), 0, n, s).value().Wait().ok());
  std::vector<unsigned char> out(n);
  ASSERT_TRUE(down.HostRead(0, out.data(), n).ok());
  EXPECT_EQ(out, in);
  // At an offset in the buffer: the second half of the device buffer lands
  // at the start, the first half after it.
  ASSERT_TRUE(down.ReadBack(Span(dev), n / 2, n / 2, s).ok());
  ASSERT_TRUE(down.ReadBack(Span(dev), 0, n / 2, s, n / 2).value().Wait().ok());
  ASSERT_TRUE(down.HostRead(0, out.data(), n).ok());
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + n / 2, in.begin() + n / 2));
  EXPECT_TRUE(std::equal(out.begin() + n / 2, out.end(), in.begin()));
  EXPECT_EQ(down.ReadBack(Span(dev), 0, 2, s, n - 1).status().code(),
            absl::StatusCode::kOutOfRange);
  absl::Status order = env.sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
  down.Reset().IgnoreError();
  dev.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

TEST(StagingBufferPool, KeepsAtMostMaxBuffersAndEvictsTheLeastRecentlyReturned) {
  Env env;
  StagingPoolOptions o;
  o.max_buffers = 2;
  auto pool = env.Pool(o);
  StagingBuffer a = pool->Acquire(4096).value();
  StagingBuffer b = pool->Acquire(4096).value();
  StagingBuffer c = pool->Acquire(4096).value();
  void* pa = a.data();
  void* pb = b.data();
  void* pc = c.data();
  const std::size_t host_allocs = env.sim->Accounting().calls_to(BackendOp::kHostAlloc);
  ASSERT_TRUE(a.Reset().ok());
  ASSERT_TRUE(b.Reset().ok());
  ASSERT_TRUE(c.Reset().ok());  // evicts a, the least recently returned
  StagingPoolStats st = pool->stats();
  EXPECT_EQ(st.idle_buffers, 2u);
  EXPECT_EQ(st.releases, 1u);
  EXPECT_EQ(env.sim->Accounting().calls_to(BackendOp::kHostFree), 1u) << "the evicted one is freed";
  StagingBuffer x = pool->Acquire(4096).value();
  StagingBuffer y = pool->Acquire(4096).value();
  EXPECT_TRUE((x.data() == pb && y.data() == pc) || (x.data() == pc && y.data() == pb));
  EXPECT_NE(x.data(), pa);
  EXPECT_EQ(env.sim->Accounting().calls_to(BackendOp::kHostAlloc), host_allocs);
  x.Reset().IgnoreError();
  y.Reset().IgnoreError();
  ASSERT_TRUE(pool->Trim().ok());
  EXPECT_EQ(pool->stats().idle_buffers, 0u);
  EXPECT_EQ(env.sim->Accounting().calls_to(BackendOp::kHostFree), 3u);
}

TEST(StagingBufferPool, WithNoRoomKeptEveryBufferGoesBackToThePinnedAllocator) {
  Env env;
  StagingPoolOptions o;
  o.max_buffers = 0;
  auto pool = env.Pool(o);
  void* first = nullptr;
  {
    StagingBuffer a = pool->Acquire(512).value();
    first = a.data();
  }
  EXPECT_EQ(pool->stats().releases, 1u);
  EXPECT_EQ(pool->stats().idle_buffers, 0u);
  StagingBuffer b = pool->Acquire(512).value();
  EXPECT_EQ(pool->stats().hits, 0u);
  (void)first;
}

// Bug: when no event could be recorded for a returned buffer, the pool kept
// it anyway and reused it with its copy still queued.
TEST(StagingBufferPool, WhenNoEventCanBeRecordedTheReturnWaitsForTheStreamOnTheHost) {
  Env env;
  auto pool = env.Pool();
  const Stream s = env.sim->CreateStream(0).value();
  constexpr std::size_t n = 64 * 1024;
  DeviceBuffer dev = DeviceBuffer::Create(env.cache, n, s).value();
  StagingBuffer a = pool->Acquire(n).value();
  void* first = a.data();
  ASSERT_TRUE(env.sim->LaunchKernel(s, {{dev.data(), n, AccessMode::kWrite, 0}}, 2'000'000).ok());
  ASSERT_TRUE(a.ReadBack(Span(dev), 0, n, s).ok());
  env.faulty->AddRule(FaultRule::EveryNth(BackendOp::kEventRecord, 1, FaultAction::kReturnError));
  ASSERT_TRUE(a.Reset().ok());
  env.faulty->ClearRules();
  StagingPoolStats st = pool->stats();
  EXPECT_EQ(st.host_waits, 1u);
  EXPECT_EQ(st.idle_buffers, 1u) << "waited for: kept";
  StagingBuffer b = pool->Acquire(n).value();
  EXPECT_EQ(b.data(), first);
  std::vector<unsigned char> ones(n, 1);
  ASSERT_TRUE(b.HostWrite(0, ones.data(), n).ok());
  absl::Status order = env.sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
  b.Reset().IgnoreError();
  dev.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

// Bug: an evicted (or trimmed) buffer went back to the pinned allocator with
// its copy still queued, and the pinned allocator, which never heard of the
// pool's streams, handed it out again at once.
// A pool that keeps one buffer, over a pinned allocator that caches: `a` is
// back with a readback queued behind a 2 ms kernel and `b` still held, so
// returning `b` evicts `a`.
struct EvictionScene {
  static constexpr std::size_t n = 64 * 1024;
  explicit EvictionScene(Env& env)
      : pool(env.Pool(OneBuffer())),
        s(env.sim->CreateStream(0).value()),
        dev(DeviceBuffer::Create(env.cache, n, s).value()),
        a(pool->Acquire(n).value()),
        b(pool->Acquire(n).value()),
        first(a.data()) {
    EXPECT_TRUE(env.sim->LaunchKernel(s, {{dev.data(), n, AccessMode::kWrite, 0}}, 2'000'000).ok());
    EXPECT_TRUE(a.ReadBack(Span(dev), 0, n, s).ok());
    EXPECT_TRUE(a.Reset().ok());
  }
  static StagingPoolOptions OneBuffer() {
    StagingPoolOptions o;
    o.max_buffers = 1;
    return o;
  }
  std::shared_ptr<StagingBufferPool> pool;
  Stream s;
  DeviceBuffer dev;
  StagingBuffer a;
  StagingBuffer b;
  void* first;  // `a`'s memory
};

TEST(StagingBufferPool, ABufferLeavesThePoolOnlyOnceItsCopyIsDone) {
  Env env(SimOptions::WithDevices(2, 64 << 20), PinnedHostOptions{});
  EvictionScene scene(env);
  constexpr std::size_t n = EvictionScene::n;
  const Stream s = scene.s;
  DeviceBuffer& dev = scene.dev;
  auto& pool = scene.pool;
  void* evicted = scene.first;
  ASSERT_TRUE(scene.b.Reset().ok());  // evicts `a`, its copy maybe still queued
  // The pinned allocator gives the evicted block to whoever asks next.
  PinnedBlock next = env.pinned->Allocate(n, 0).value();
  EXPECT_EQ(next.ptr, evicted); 
  ASSERT_TRUE(env.sim->NoteHostAccess(next.ptr, n, AccessMode::kWrite).ok());
  absl::Status order = env.sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
  ASSERT_TRUE(env.pinned->Deallocate(next).ok());
  dev.Reset().IgnoreError();
  // Destroyed with a buffer still pooled: the pool's own events outlive it.
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
  ASSERT_TRUE(pool->Trim().ok());
}

// Bug: when the wait for an evicted buffer's copy failed (a failing device),
// the buffer went back to the pinned allocator anyway, or was dropped.
TEST(StagingBufferPool, ABufferWhoseCopyCannotBeWaitedForIsRetainedUntilATrimCan) {
  Env env(SimOptions::WithDevices(2, 64 << 20), PinnedHostOptions{});
  EvictionScene scene(env);
  constexpr std::size_t n = EvictionScene::n;
  const Stream s = scene.s;
  DeviceBuffer& dev = scene.dev;
  auto& pool = scene.pool;
  void* retained = scene.first;
  env.faulty->AddRule(
      FaultRule::EveryNth(BackendOp::kEventSynchronize, 1, FaultAction::kReturnError));
  EXPECT_FALSE(scene.b.Reset().ok()) << "evicting `a` needs a wait that fails";
  StagingPoolStats st = pool->stats();
  EXPECT_EQ(st.retained_buffers, 1u);
  EXPECT_EQ(st.retained_bytes, n);
  EXPECT_EQ(st.releases, 0u);
  EXPECT_EQ(env.pinned->stats().live_bytes, 2 * n) << "still the pool's, not the allocator's";
  // Never handed out while retained.
  StagingBuffer c = pool->Acquire(n).value();
  EXPECT_NE(c.data(), retained);
  c.Reset().IgnoreError();
  env.faulty->ClearRules();
  ASSERT_TRUE(pool->Trim().ok());
  st = pool->stats();
  EXPECT_EQ(st.retained_buffers, 0u);
  EXPECT_EQ(env.pinned->stats().live_bytes, 0u);
  env.ExpectNothingRaced();
  dev.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

TEST(StagingBufferPool, OutOfPinnedMemoryGivesBackIdleBuffersAndTriesAgain) {
  SimOptions o = SimOptions::WithDevices(1, 64 << 20);
  o.pinned_capacity_bytes = 1 << 20;
  Env env(o);
  auto pool = env.Pool();
  { StagingBuffer small = pool->Acquire(600 << 10).value(); }  // idle: 1 MiB capacity
  EXPECT_EQ(pool->stats().idle_buffers, 1u);
  // Needs a 1 MiB buffer... which fits the idle one: a hit.
  { StagingBuffer same = pool->Acquire(700 << 10).value(); }
  EXPECT_EQ(pool->stats().hits, 1u);
  ASSERT_TRUE(pool->Trim().ok());
  { StagingBuffer small = pool->Acquire(300 << 10).value(); }  // idle: 512 KiB
  // 1 MiB does not fit the idle 512 KiB, nor the device beside it.
  absl::StatusOr<StagingBuffer> big = pool->Acquire(1 << 20);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(pool->stats().idle_buffers, 0u) << "the idle buffer was given back to make room";
  big->Reset().IgnoreError();
  // What can never fit fails with the pinned allocator's error, and leaves
  // the pool as it was.
  absl::StatusOr<StagingBuffer> huge = pool->Acquire(2 << 20);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_EQ(pool->stats().in_use, 0u);
}

TEST(StagingBufferPool, BadRequestsAreRefusedAndChangeNothing) {
  Env env;
  auto pool = env.Pool();
  EXPECT_EQ(pool->Acquire(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Acquire(~std::size_t{0}).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(StagingBufferPool::Create(nullptr, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  StagingPoolOptions bad;
  bad.min_buffer_bytes = 3000;
  EXPECT_EQ(StagingBufferPool::Create(env.pinned, 0, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  const Stream s = env.sim->CreateStream(0).value();
  DeviceBuffer dev = DeviceBuffer::Create(env.cache, 4096, s).value();
  StagingBuffer a = pool->Acquire(1000).value();
  char byte = 0;
  EXPECT_EQ(a.HostRead(1000, &byte, 1).code(), absl::StatusCode::kOutOfRange)
      << "past size(), though within the capacity";
  EXPECT_EQ(a.HostWrite(~std::size_t{0}, &byte, 2).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.HostWrite(1000, &byte, 1).code(), absl::StatusCode::kOutOfRange)
      << "past size(), though within the capacity";
  EXPECT_EQ(a.ReadBack(Span(dev), 0, 1001, s).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(a.ReadBack(Span(dev), 4000, 1000, s).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.RecordStream(Stream::Default(1)).code(), absl::StatusCode::kInvalidArgument);
  StagingBuffer moved = std::move(a);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(a.HostRead(0, &byte, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->stats().in_use, 1u);
  moved.Reset().IgnoreError();
  EXPECT_EQ(pool->stats().in_use, 0u);
  dev.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->SynchronizeStream(s).ok());
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

// Threads share one pool, each reading back its own device buffer on its own
// stream and returning the staging buffer with the copy in flight: TSan
// checks the pool's locking, the sim's checker every reuse, and the
// contents prove no two threads ever held one buffer at once.
TEST(StagingBufferPool, ThreadsSharingOnePoolNeverShareABuffer) {
  Env env;
  StagingPoolOptions o;
  o.max_buffers = 3;
  auto pool = env.Pool(o);
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const Stream s = env.sim->CreateStream(0).value();
      constexpr std::size_t n = 2048;
      DeviceBuffer dev = DeviceBuffer::Create(env.cache, n, s).value();
      std::vector<unsigned char> mine(n, static_cast<unsigned char>(t + 1));
      std::vector<unsigned char> seen(n);
      for (int r = 0; r < kRounds; ++r) {
        StagingBuffer b = pool->Acquire(n - static_cast<std::size_t>(r % 7)).value();
        if (!b.HostWrite(0, mine.data(), b.size()).ok()) ++wrong;
        if (!b.Upload(Span(dev), 0, b.size(), s).ok()) ++wrong;
        StagingBuffer back = pool->Acquire(b.size()).value();
        if (!back.ReadBack(Span(dev), 0, back.size(), s).value().Wait().ok()) ++wrong;
        if (!back.HostRead(0, seen.data(), back.size()).ok()) ++wrong;
        for (std::size_t i = 0; i < back.size(); ++i) wrong += seen[i] != mine[i];
      }  // both back with nothing in flight; `b` with its upload maybe not
      dev.Reset().IgnoreError();
      env.sim->SynchronizeStream(s).IgnoreError();
      env.sim->DestroyStream(s).IgnoreError();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  StagingPoolStats st = pool->stats();
  EXPECT_EQ(st.acquires, st.hits + st.misses);
  EXPECT_EQ(st.acquires, std::uint64_t{2 * kThreads * kRounds});
  EXPECT_EQ(st.in_use, 0u);
  EXPECT_LE(st.idle_buffers, 3u);
  EXPECT_GT(st.hit_rate(), 0.5);
  absl::Status order = env.sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
}

}  // namespace
}  // namespace gpualloc
