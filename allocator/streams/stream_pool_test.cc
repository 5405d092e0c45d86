#include "allocator/streams/stream_pool.h"

#include <algorithm>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

std::shared_ptr<SimBackend> Sim(int devices = 2) {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(devices, 64 << 20));
}

StreamPoolOptions Streams(int n) {
  StreamPoolOptions o;
  o.streams_per_priority = n;
  return o;
}

TEST(StreamPool, HandsOutItsStreamsInTurnCreatingEachOnItsFirstTurn) {
  auto sim = Sim();
  auto pool = StreamPool::Create(sim, Streams(3)).value();
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kStreamCreate), 0u) << "created lazily";
  std::vector<Stream> got;
  for (int i = 0; i < 7; ++i) got.push_back(pool->Next(0).value());
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kStreamCreate), 3u);
  EXPECT_NE(got[0], got[1]);
  EXPECT_NE(got[1], got[2]);
  EXPECT_NE(got[0], got[2]);
  EXPECT_EQ(got[3], got[0]);
  EXPECT_EQ(got[4], got[1]);
  EXPECT_EQ(got[5], got[2]);
  EXPECT_EQ(got[6], got[0]);
  for (Stream s : got) EXPECT_FALSE(s.is_default());
  Stream other = pool->Next(1).value();
  EXPECT_EQ(other.device, 1);
  StreamPoolStats st = pool->stats();
  EXPECT_EQ(st.handed_out[0], 8u);
  EXPECT_EQ(st.created[0], 4u);
  EXPECT_EQ(st.created[1], 0u);
}

TEST(StreamPool, HighPriorityStreamsHaveTheDevicesHighestPriorityInAPoolOfTheirOwn) {
  SimOptions o = SimOptions::WithDevices(2, 64 << 20);
  o.devices[1].stream_priority_greatest = 0;  // device 1 has no priorities
  auto sim = std::make_shared<SimBackend>(o);
  auto pool = StreamPool::Create(sim, Streams(2)).value();
  Stream normal = pool->Next(0).value();
  Stream high = pool->Next(0, StreamPriority::kHigh).value();
  EXPECT_NE(normal, high);
  EXPECT_EQ(sim->GetStreamPriority(normal).value(), 0);
  EXPECT_EQ(sim->GetStreamPriority(high).value(), -5);
  EXPECT_EQ(pool->Next(0, StreamPriority::kHigh).value() == high, false) << "its own ring of 2";
  EXPECT_EQ(pool->Next(0, StreamPriority::kHigh).value(), high);
  Stream high1 = pool->Next(1, StreamPriority::kHigh).value();
  Stream normal1 = pool->Next(1).value();
  EXPECT_EQ(sim->GetStreamPriority(high1).value(), 0);
  EXPECT_NE(high1, normal1);
}

TEST(StreamPool, AStreamThatCannotBeCreatedIsRetriedOnTheNextCall) {
  auto sim = Sim();
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  auto pool = StreamPool::Create(faulty, Streams(2)).value();
  faulty->AddRule(FaultRule::NthCall(BackendOp::kStreamCreate, 1, FaultAction::kThrowBadAlloc));
  absl::StatusOr<Stream> failed = pool->Next(0);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted) << failed.status();
  Stream a = pool->Next(0).value();
  Stream b = pool->Next(0).value();
  EXPECT_NE(a, b);
  EXPECT_EQ(pool->Next(0).value(), a) << "two streams in the ring, as if nothing had failed";
  StreamPoolStats st = pool->stats();
  EXPECT_EQ(st.failed_creations, 1u);
  EXPECT_EQ(st.created[0], 2u);
}

TEST(StreamPool, BadRequestsAreRefused) {
  auto sim = Sim();
  EXPECT_EQ(StreamPool::Create(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StreamPool::Create(sim, Streams(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StreamPool::Create(sim, Streams(5000)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto pool = StreamPool::Create(sim, Streams(2)).value();
  EXPECT_EQ(pool->device_count(), 2);
  EXPECT_EQ(pool->Next(2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Next(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Next(0, static_cast<StreamPriority>(7)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kStreamCreate), 0u);
}

// Bug: the pool destroyed its streams with work still queued, or never.
TEST(StreamPool, ItsDestructionWaitsForTheWorkOnItsStreamsAndDestroysThemAll) {
  auto sim = Sim();
  void* p = sim->Malloc(0, 4096).value();
  Event done = sim->CreateEvent(0).value();
  {
    auto pool = StreamPool::Create(sim, Streams(4)).value();
    for (int i = 0; i < 3; ++i) pool->Next(0).value();
    Stream s = pool->Next(0, StreamPriority::kHigh).value();
    ASSERT_TRUE(sim->LaunchKernel(s, {{p, 4096, AccessMode::kWrite, 0}}, 5'000'000).ok());
    ASSERT_TRUE(sim->RecordEvent(done, s).ok());
    EXPECT_FALSE(sim->QueryEvent(done).value()) << "still queued when the pool goes";
  }
  EXPECT_TRUE(sim->QueryEvent(done).value());
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kStreamDestroy), 4u);
  ASSERT_TRUE(sim->DestroyEvent(done).ok());
  ASSERT_TRUE(sim->Free(0, p).ok());
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

// The caching allocator keeps stream order on the pool's streams as on any.
TEST(StreamPool, TheCachingAllocatorTreatsPoolStreamsAsOrdinaryStreams) {
  auto sim = Sim();
  auto pool = StreamPool::Create(sim, Streams(2)).value();
  auto cache = CachingAllocator::Create(sim, 0, {}).value();
  const Stream s1 = pool->Next(0).value();
  const Stream s2 = pool->Next(0, StreamPriority::kHigh).value();
  Allocation a = cache->Allocate(1 << 20, s1).value();
  ASSERT_TRUE(sim->LaunchKernel(s1, {{a.ptr, a.bytes, AccessMode::kWrite, 0}}, 2'000'000).ok());
  ASSERT_TRUE(cache->Deallocate(a, s1).ok());  // the kernel still queued
  Allocation b = cache->Allocate(1 << 20, s2).value();
  ASSERT_TRUE(sim->LaunchKernel(s2, {{b.ptr, b.bytes, AccessMode::kWrite, 0}}, 1'000).ok());
  absl::Status st = sim->CheckStreamOrder();
  EXPECT_TRUE(st.ok()) << st;
  ASSERT_TRUE(cache->Deallocate(b, s2).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
}

// Threads race for streams: each stream is created exactly once, and every
// handout is one of the pool's streams.
TEST(StreamPool, ThreadsRacingForStreamsCreateEachOnce) {
  auto sim = Sim();
  auto pool = StreamPool::Create(sim, Streams(4)).value();
  constexpr int kThreads = 8;
  constexpr int kCalls = 200;
  std::mutex mu;
  std::set<std::uintptr_t> seen[2];
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Stream> mine;
      for (int i = 0; i < kCalls; ++i) {
        const StreamPriority p = (i + t) % 2 == 0 ? StreamPriority::kDefault : StreamPriority::kHigh;
        mine.push_back(pool->Next(t % 2, p).value());
      }
      std::lock_guard<std::mutex> lock(mu);
      for (int i = 0; i < kCalls; ++i) seen[(i + t) % 2].insert(mine[i].handle);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(seen[0].size(), 8u) << "4 per device";
  EXPECT_EQ(seen[1].size(), 8u);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kStreamCreate), 16u);
  StreamPoolStats st = pool->stats();
  EXPECT_EQ(st.handed_out[0] + st.handed_out[1], std::uint64_t{kThreads * kCalls});
}

}  // namespace
}  // namespace gpualloc
