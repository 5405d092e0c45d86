#include "allocator/pools/keyed_buffer_cache.h"

#include <atomic>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

enum class Reduction { kSum, kMax };

struct Env {
  Env() {
    sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 64 << 20));
    faulty = std::make_shared<FailpointBackend>(sim, 1);
    cache = CachingAllocator::Create(sim, 0, {}).value();
    pinned = std::make_shared<PinnedHostAllocator>(faulty);
  }
  std::shared_ptr<KeyedBufferCache> Keyed(KeyedCacheOptions o = {}) {
    return KeyedBufferCache::Create(cache, pinned, o).value();
  }
  // A kernel writing all of `p` on `s` for 2 ms: work in flight.
  void Write(Stream s, void* p, std::size_t n) {
    ASSERT_TRUE(sim->LaunchKernel(s, {{p, n, AccessMode::kWrite, 0}}, 2'000'000).ok());
  }
  void ExpectStreamOrderHeld() {
    absl::Status st = sim->CheckStreamOrder();
    EXPECT_TRUE(st.ok()) << st;
  }
  // Frees what `keyed` keeps, waits for the device, destroys `streams`.
  void TearDown(KeyedBufferCache& keyed, std::initializer_list<Stream> streams) {
    EXPECT_TRUE(keyed.Trim().ok());
    EXPECT_TRUE(sim->DeviceSynchronize(0).ok());
    for (Stream s : streams) EXPECT_TRUE(sim->DestroyStream(s).ok());
  }
  std::shared_ptr<SimBackend> sim;
  std::shared_ptr<FailpointBackend> faulty;
  std::shared_ptr<CachingAllocator> cache;
  std::shared_ptr<PinnedHostAllocator> pinned;
};

TEST(KeyedBufferCache, ABufferComesBackOnlyUnderItsOwnKey) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s = Stream::Default(0);
  void* first = nullptr;
  {
    KeyedBuffer<float> sum = keyed->Acquire<float>(4, Reduction::kSum, s).value();
    EXPECT_EQ(sum.count(), 4u);
    first = sum.data();
  }
  // Same bytes, other keys: another purpose, another type, another count.
  KeyedBuffer<float> max = keyed->Acquire<float>(4, Reduction::kMax, s).value();
  KeyedBuffer<int> ints = keyed->Acquire<int>(4, Reduction::kSum, s).value();
  KeyedBuffer<float> five = keyed->Acquire<float>(5, Reduction::kSum, s).value();
  EXPECT_NE(static_cast<void*>(max.data()), first);
  EXPECT_NE(static_cast<void*>(ints.data()), first);
  EXPECT_NE(static_cast<void*>(five.data()), first);
  KeyedBuffer<float> again = keyed->Acquire<float>(4, Reduction::kSum, s).value();
  EXPECT_EQ(static_cast<void*>(again.data()), first);
  KeyedCacheStats st = keyed->stats();
  EXPECT_EQ(st.acquires, 5u);
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 4u);
  EXPECT_EQ(st.in_use, 4u);
  EXPECT_DOUBLE_EQ(st.hit_rate(), 0.2);
  max.Reset().IgnoreError();
  ints.Reset().IgnoreError();
  st = keyed->stats();
  EXPECT_EQ(st.idle_buffers, 2u);
  EXPECT_EQ(st.keys, 2u);
  EXPECT_EQ(st.idle_bytes, 32u);
}

TEST(KeyedBufferCache, KeepsAtMostMaxPerKeyAndMaxIdleBuffers) {
  Env env;
  KeyedCacheOptions o;
  o.max_per_key = 2;
  o.max_idle_buffers = 3;
  auto keyed = env.Keyed(o);
  const Stream s = Stream::Default(0);
  std::vector<KeyedBuffer<double>> held;
  for (int i = 0; i < 3; ++i) held.push_back(keyed->Acquire<double>(8, 1, s).value());
  held.clear();
  KeyedCacheStats st = keyed->stats();
  EXPECT_EQ(st.idle_buffers, 2u);
  EXPECT_EQ(st.dropped, 1u);
  EXPECT_EQ(env.cache->stats().active_blocks.current, 2) << "the dropped one is freed";
  for (int i = 0; i < 2; ++i) held.push_back(keyed->Acquire<double>(8, 2, s).value());
  held.clear();
  st = keyed->stats();
  EXPECT_EQ(st.idle_buffers, 3u) << "the bound in all";
  EXPECT_EQ(st.dropped, 2u);
  EXPECT_EQ(st.keys, 2u);
  ASSERT_TRUE(keyed->Trim().ok());
  EXPECT_EQ(keyed->stats().idle_buffers, 0u);
  EXPECT_EQ(keyed->stats().keys, 0u);
  EXPECT_EQ(env.cache->stats().active_blocks.current, 0);
}

TEST(KeyedBufferCache, ResultSlotsReadWhatTheDeviceWroteInStreamOrder) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s = env.sim->CreateStream(0).value();
  Transfers t(env.sim);
  {
    KeyedBuffer<std::uint32_t> b = keyed->Acquire<std::uint32_t>(4, Reduction::kSum, s).value();
    ASSERT_TRUE(b.Zero().ok());
    const std::uint32_t v = 0xC0FFEE;
    ASSERT_TRUE(t.ToDevice(b.span(), 2 * sizeof(v), &v, sizeof(v), s).ok());
    EXPECT_EQ(b.ReadResult(2).value(), 0xC0FFEEu);
    EXPECT_EQ(b.ReadResult(0).value(), 0u) << "zeroed, in the stream's order before the write";
    EXPECT_EQ(b.ReadResults().value(), (std::vector<std::uint32_t>{0, 0, 0xC0FFEE, 0}));
    EXPECT_EQ(b.ReadResult(4).status().code(), absl::StatusCode::kOutOfRange);
  }
  EXPECT_EQ(env.pinned->stats().live_bytes, 512u) << "the slots stay with the cached buffer";
  env.ExpectStreamOrderHeld();
  ASSERT_TRUE(keyed->Trim().ok());
  EXPECT_EQ(env.pinned->stats().live_bytes, 0u);
  ASSERT_TRUE(env.sim->SynchronizeStream(s).ok());
  ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

// Bug: a buffer returned by one stream was handed to another with the first
// stream's kernel still writing it.
TEST(KeyedBufferCache, ABufferHandedToAnotherStreamWaitsForTheOldStreamsWork) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s1 = env.sim->CreateStream(0).value();
  const Stream s2 = env.sim->CreateStream(0).value();
  void* first = nullptr;
  {
    KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s1).value();
    first = b.data();
    env.Write(s1, b.data(), 4096);
  }
  KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s2).value();
  EXPECT_EQ(static_cast<void*>(b.data()), first);
  EXPECT_EQ(b.stream(), s2);
  EXPECT_EQ(keyed->stats().stream_handoffs, 1u);
  env.Write(s2, b.data(), 4096);
  env.ExpectStreamOrderHeld();
  b.Reset().IgnoreError();
  env.TearDown(*keyed, {s1, s2});
}

// Bug: work on a stream named by RecordStream was forgotten: the next user
// (and the final free) did not wait for it.
TEST(KeyedBufferCache, WorkOnRecordedStreamsIsWaitedForByTheNextUserAndByTheFree) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s1 = env.sim->CreateStream(0).value();
  const Stream s2 = env.sim->CreateStream(0).value();
  Transfers t(env.sim);
  auto use_on_s2 = [&](KeyedBuffer<float>& b) {
    ASSERT_TRUE(Completion::Record(env.sim, s1).value().Then(s2).ok());
    env.Write(s2, b.data(), 4096);
    ASSERT_TRUE(b.RecordStream(s2).ok());
  };
  {
    KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s1).value();
    use_on_s2(b);
  }
  {
    KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s1).value();
    EXPECT_EQ(keyed->stats().stream_handoffs, 1u);
    env.Write(s1, b.data(), 4096);
    env.ExpectStreamOrderHeld();
    use_on_s2(b);
  }
  // Freed by Trim with s2's kernel queued: the allocator's next user of the
  // block on s1 must come after it.
  ASSERT_TRUE(keyed->Trim().ok());
  DeviceBuffer next = DeviceBuffer::Create(env.cache, 4096, s1).value();
  env.Write(s1, next.data(), 4096);
  env.ExpectStreamOrderHeld();
  next.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(env.sim->DestroyStream(s1).ok());
  ASSERT_TRUE(env.sim->DestroyStream(s2).ok());
}

TEST(KeyedBufferCache, ABufferThatCannotBeOrderedOntoTheNewStreamIsReplaced) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s1 = env.sim->CreateStream(0).value();
  const Stream s2 = env.sim->CreateStream(0).value();
  // The cache's events go through the pinned allocator's (faulty) backend.
  {
    KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s1).value();
    env.Write(s1, b.data(), 4096);
  }
  env.faulty->AddRule(FaultRule::EveryNth(BackendOp::kEventRecord, 1, FaultAction::kReturnError));
  KeyedBuffer<float> b = keyed->Acquire<float>(1024, Reduction::kSum, s2).value();
  env.faulty->ClearRules();
  KeyedCacheStats st = keyed->stats();
  EXPECT_EQ(st.dropped, 1u);
  EXPECT_EQ(st.misses, 2u);
  EXPECT_EQ(st.hits, 0u);
  env.Write(s2, b.data(), 4096);
  env.ExpectStreamOrderHeld();
  b.Reset().IgnoreError();
  env.TearDown(*keyed, {s1, s2});
}

TEST(KeyedBufferCache, BadRequestsAreRefusedAndChangeNothing) {
  Env env;
  auto keyed = env.Keyed();
  const Stream s = Stream::Default(0);
  EXPECT_EQ(keyed->Acquire<float>(0, 0, s).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(keyed->Acquire<double>(~std::size_t{0} / 4, 0, s).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "count * sizeof(T) overflows";
  EXPECT_EQ(keyed->Acquire<float>(4, 0, Stream::Default(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyedBufferCache::Create(nullptr, env.pinned).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyedBufferCache::Create(env.cache, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Memory the device does not have: the allocator's error.
  EXPECT_EQ(keyed->Acquire<char>(std::size_t{1} << 40, 0, s).status().code(),
            absl::StatusCode::kResourceExhausted);
  KeyedBuffer<float> b = keyed->Acquire<float>(4, 0, s).value();
  EXPECT_EQ(b.RecordStream(Stream::Default(1)).code(), absl::StatusCode::kInvalidArgument);
  KeyedBuffer<float> moved = std::move(b);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(b.ReadResult(0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.Zero().code(), absl::StatusCode::kFailedPrecondition);
  KeyedCacheStats st = keyed->stats();
  EXPECT_EQ(st.acquires, 1u);
  EXPECT_EQ(st.in_use, 1u);
  moved.Reset().IgnoreError();
  EXPECT_EQ(keyed->stats().idle_buffers, 1u);
}

// Threads share keys and hand buffers to each other across their streams:
// every thread reads back exactly what it wrote (no two threads hold one
// buffer), TSan checks the locking, the sim's checker every handoff.
TEST(KeyedBufferCache, ThreadsSharingKeysNeverShareABufferAndKeepStreamOrder) {
  Env env;
  KeyedCacheOptions o;
  o.max_per_key = 2;
  auto keyed = env.Keyed(o);
  constexpr int kThreads = 4;
  constexpr int kRounds = 150;
  std::atomic<int> wrong{0};
  std::vector<Stream> streams;
  for (int t = 0; t < kThreads; ++t) streams.push_back(env.sim->CreateStream(0).value());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Transfers transfers(env.sim);
      for (int r = 0; r < kRounds; ++r) {
        absl::StatusOr<KeyedBuffer<std::uint32_t>> b =
            keyed->Acquire<std::uint32_t>(8 + static_cast<std::size_t>(r % 3), r % 2, streams[t]);
        if (!b.ok()) {
          ++wrong;
          continue;
        }
        const std::uint32_t mine = static_cast<std::uint32_t>(t * 1000 + r);
        if (!b->Zero().ok()) ++wrong;
        if (!env.sim->LaunchKernel(streams[t], {{b->data(), 32, AccessMode::kWrite, 0}}, 20'000)
                 .ok()) {
          ++wrong;
        }
        if (!transfers.ToDevice(b->span(), 4, &mine, sizeof(mine), streams[t]).ok()) ++wrong;
        absl::StatusOr<std::uint32_t> seen = b->ReadResult(1);
        if (!seen.ok() || *seen != mine) ++wrong;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  KeyedCacheStats st = keyed->stats();
  EXPECT_EQ(st.acquires, std::uint64_t{kThreads * kRounds});
  EXPECT_EQ(st.acquires, st.hits + st.misses);
  EXPECT_EQ(st.in_use, 0u);
  EXPECT_LE(st.idle_buffers, 6u * 2u);
  EXPECT_GT(st.hit_rate(), 0.5);
  env.ExpectStreamOrderHeld();
  ASSERT_TRUE(keyed->Trim().ok());
  ASSERT_TRUE(env.sim->DeviceSynchronize(0).ok());
  for (Stream s : streams) ASSERT_TRUE(env.sim->DestroyStream(s).ok());
}

}  // namespace
}  // namespace gpualloc
