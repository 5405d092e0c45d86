#include "harness/conformance/conformance.h"

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "harness/invariants/invariants.h"

namespace gpualloc::harness {

void ResourceConformance::SetUp() { under_test_ = GetParam().make(); }

void ResourceConformance::TearDown() {
  if (under_test_.release_cache) {
    EXPECT_TRUE(under_test_.release_cache().ok());
  }
  under_test_.resource.reset();
  if (under_test_.sim) {
    // Whatever the case did, nothing was reused, unmapped or overwritten
    // while queued work could still touch it.
    absl::Status ordered = CheckStreamOrder(*under_test_.sim);
    EXPECT_TRUE(ordered.ok()) << ordered;
    const SimAccounting acc = under_test_.sim->Accounting();
    EXPECT_EQ(acc.guard_violations, 0u);
    for (const auto& d : acc.devices) {
      EXPECT_EQ(d.device_bytes, 0u) << "device memory leaked: " << acc.Describe();
      EXPECT_EQ(d.pinned_bytes, 0u) << "pinned memory leaked: " << acc.Describe();
    }
  }
}

namespace {

Stream Default(MemoryResource& r) { return Stream::Default(r.device()); }

TEST_P(ResourceConformance, AllocationsAreAlignedAndUsable) {
  for (std::size_t bytes : {1u, 7u, 256u, 1000u, 4096u, 65537u, 1u << 20}) {
    absl::StatusOr<Allocation> a = resource().Allocate(bytes);
    ASSERT_TRUE(a.ok()) << bytes << ": " << a.status();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a->ptr) % resource().alignment(), 0u) << bytes;
    EXPECT_EQ(a->bytes, bytes);
    EXPECT_EQ(a->device(), resource().device());
    EXPECT_TRUE(resource().Deallocate(*a).ok());
  }
}

TEST_P(ResourceConformance, ZeroAndAbsurdSizesAreErrorsNotCrashes) {
  EXPECT_EQ(resource().Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  for (std::size_t absurd : {std::size_t{1} << 62, ~std::size_t{0}, ~std::size_t{0} - 255}) {
    absl::StatusOr<Allocation> a = resource().Allocate(absurd);
    EXPECT_FALSE(a.ok());
    EXPECT_NE(a.status().code(), absl::StatusCode::kInternal) << a.status();
  }
  absl::StatusOr<Allocation> after = resource().Allocate(256);
  ASSERT_TRUE(after.ok()) << "the resource still works after refusing: " << after.status();
  EXPECT_TRUE(resource().Deallocate(*after).ok());
}

TEST_P(ResourceConformance, LiveAllocationsNeverOverlapAndKeepTheirData) {
  std::mt19937_64 rng(11);
  LiveSet live;
  std::map<void*, std::uint64_t> cookies;
  std::vector<Allocation> all;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<Allocation> a = resource().Allocate(1 + rng() % (256 * 1024));
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(live.Add(*a, resource().alignment()).ok());
    cookies[a->ptr] = rng();
    if (under_test_.sim) {
      ASSERT_TRUE(WriteCookie(*under_test_.sim, *a, cookies[a->ptr], std::min<std::size_t>(a->bytes, 512)).ok());
    }
    all.push_back(*a);
    if (rng() % 3 == 0) {  // free one at random
      const std::size_t k = rng() % all.size();
      if (under_test_.sim) {
        ASSERT_TRUE(VerifyCookie(*under_test_.sim, all[k], cookies[all[k].ptr],
                                 std::min<std::size_t>(all[k].bytes, 512)).ok());
      }
      ASSERT_TRUE(resource().Deallocate(all[k]).ok());
      ASSERT_TRUE(live.Remove(all[k]).ok());
      all[k] = all.back();
      all.pop_back();
    }
  }
  for (const Allocation& a : all) {
    if (under_test_.sim) {
      ASSERT_TRUE(VerifyCookie(*under_test_.sim, a, cookies[a.ptr], std::min<std::size_t>(a.bytes, 512)).ok());
    }
    ASSERT_TRUE(resource().Deallocate(a).ok());
  }
}

TEST_P(ResourceConformance, FreesOnAnotherStreamAndFromAnotherThreadWork) {
  if (!under_test_.sim) GTEST_SKIP() << "needs the simulated device for streams";
  Stream other = under_test_.sim->CreateStream(resource().device()).value();
  absl::StatusOr<Allocation> a = resource().Allocate(4096, Default(resource()));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(resource().Deallocate(*a, other).ok());
  absl::StatusOr<Allocation> b = resource().Allocate(4096, other);
  ASSERT_TRUE(b.ok());
  absl::Status from_thread;
  std::thread([&] { from_thread = resource().Deallocate(*b); }).join();
  EXPECT_TRUE(from_thread.ok()) << from_thread;
  ASSERT_TRUE(under_test_.sim->SynchronizeStream(other).ok());
  ASSERT_TRUE(under_test_.sim->DestroyStream(other).ok());
}

// --- stream order ------------------------------------------------------------
// Kernels take simulated time, so memory changes hands with work in flight;
// the checker's verdict does not depend on that timing.
constexpr std::int64_t kKernelNs = 200'000;

absl::Status Write(SimBackend& sim, const Allocation& a, Stream s, unsigned char fill) {
  return sim.LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kWrite, fill}}, kKernelNs, "write");
}
absl::Status Read(SimBackend& sim, const Allocation& a, Stream s) {
  return sim.LaunchKernel(s, {{a.ptr, a.bytes, AccessMode::kRead, 0}}, kKernelNs, "read");
}

TEST_P(ResourceConformance, FreedWithWorkQueuedAndReusedOnTheSameStream) {
  if (!under_test_.sim) GTEST_SKIP() << "needs the simulated device";
  SimBackend& sim = *under_test_.sim;
  const Stream s = sim.CreateStream(resource().device()).value();
  for (int round = 0; round < 8; ++round) {
    absl::StatusOr<Allocation> a = resource().Allocate(64 * 1024, s);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(Write(sim, *a, s, static_cast<unsigned char>(round)).ok());
    ASSERT_TRUE(resource().Deallocate(*a, s).ok());  // the kernel is still queued
  }
  ASSERT_TRUE(sim.DestroyStream(s).ok());
}

TEST_P(ResourceConformance, ReuseOnAnotherStreamIsOrderedAfterTheOldWork) {
  if (!under_test_.sim) GTEST_SKIP() << "needs the simulated device";
  SimBackend& sim = *under_test_.sim;
  const Stream s = sim.CreateStream(resource().device()).value();
  const Stream t = sim.CreateStream(resource().device()).value();
  for (std::size_t bytes : {512u, 64u * 1024, 3u << 20}) {
    std::vector<Allocation> on_s;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Allocation> a = resource().Allocate(bytes, s);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(Write(sim, *a, s, 1).ok());
      on_s.push_back(*a);
    }
    for (const Allocation& a : on_s) ASSERT_TRUE(resource().Deallocate(a, s).ok());
    // Whatever t gets, its writes must come after s's (a wait, or new memory).
    std::vector<Allocation> on_t;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Allocation> b = resource().Allocate(bytes, t);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE(Write(sim, *b, t, 2).ok());
      on_t.push_back(*b);
    }
    for (const Allocation& b : on_t) ASSERT_TRUE(resource().Deallocate(b, t).ok());
  }
  for (Stream x : {s, t}) ASSERT_TRUE(sim.DestroyStream(x).ok());
}

TEST_P(ResourceConformance, UsedOnSeveralStreamsItIsReusedOnlyAfterAllOfThem) {
  if (!under_test_.sim) GTEST_SKIP() << "needs the simulated device";
  SimBackend& sim = *under_test_.sim;
  const Stream s = sim.CreateStream(resource().device()).value();
  const Stream t = sim.CreateStream(resource().device()).value();
  const Stream u = sim.CreateStream(resource().device()).value();
  for (int round = 0; round < 4; ++round) {
    absl::StatusOr<Allocation> a = resource().Allocate(256 * 1024, s);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(Write(sim, *a, s, 1).ok());
    for (Stream other : {t, u}) {
      ASSERT_TRUE(OrderStreams(sim, s, other).ok());  // read only after the write
      ASSERT_TRUE(Read(sim, *a, other).ok());
      if (under_test_.record_stream) {
        ASSERT_TRUE(under_test_.record_stream(*a, other).ok());
      } else {
        ASSERT_TRUE(OrderStreams(sim, other, s).ok());  // the free follows the reads
      }
    }
    ASSERT_TRUE(resource().Deallocate(*a, s).ok());
    for (Stream next : {s, t, u}) {
      absl::StatusOr<Allocation> b = resource().Allocate(256 * 1024, next);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE(Write(sim, *b, next, 3).ok());
      ASSERT_TRUE(resource().Deallocate(*b, next).ok());
    }
  }
  for (Stream x : {s, t, u}) ASSERT_TRUE(sim.DestroyStream(x).ok());
}

TEST_P(ResourceConformance, FreedOnARecordedStreamItStillWaitsForItsOwnStream) {
  if (!under_test_.sim || !under_test_.record_stream) {
    GTEST_SKIP() << "for resources with RecordStream";
  }
  SimBackend& sim = *under_test_.sim;
  const Stream s = sim.CreateStream(resource().device()).value();
  const Stream t = sim.CreateStream(resource().device()).value();
  absl::StatusOr<Allocation> a = resource().Allocate(128 * 1024, s);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(Write(sim, *a, s, 1).ok());
  ASSERT_TRUE(OrderStreams(sim, s, t).ok());
  ASSERT_TRUE(Read(sim, *a, t).ok());
  ASSERT_TRUE(under_test_.record_stream(*a, t).ok());
  ASSERT_TRUE(Read(sim, *a, s).ok());             // s still reads after t is done
  ASSERT_TRUE(resource().Deallocate(*a, t).ok());  // freed on t
  absl::StatusOr<Allocation> b = resource().Allocate(128 * 1024, t);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(Write(sim, *b, t, 2).ok());
  ASSERT_TRUE(resource().Deallocate(*b, t).ok());
  for (Stream x : {s, t}) ASSERT_TRUE(sim.DestroyStream(x).ok());
}

TEST_P(ResourceConformance, ManyThreadsAllocateAndFreeConcurrently) {
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      std::vector<Allocation> mine;
      for (int i = 0; i < 200; ++i) {
        if (mine.size() < 16 && rng() % 2) {
          absl::StatusOr<Allocation> a = resource().Allocate(1 + rng() % 65536);
          if (a.ok()) {
            mine.push_back(*a);
          } else {
            ++failures;
          }
        } else if (!mine.empty()) {
          if (!resource().Deallocate(mine.back()).ok()) ++failures;
          mine.pop_back();
        }
      }
      for (const Allocation& a : mine) {
        if (!resource().Deallocate(a).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(resource().stats().allocated_bytes.current, 0);
}

TEST_P(ResourceConformance, StatsTrackWhatIsAllocated) {
  const MemoryStats before = resource().stats();
  absl::StatusOr<Allocation> a = resource().Allocate(10000);
  ASSERT_TRUE(a.ok());
  const MemoryStats during = resource().stats();
  EXPECT_GE(during.allocated_bytes.current - before.allocated_bytes.current, 10000);
  EXPECT_EQ(during.active_blocks.current, before.active_blocks.current + 1);
  EXPECT_GE(during.reserved_bytes.current, during.allocated_bytes.current);
  EXPECT_GE(during.allocated_bytes.peak, during.allocated_bytes.current);
  ASSERT_TRUE(resource().Deallocate(*a).ok());
  const MemoryStats after = resource().stats();
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(after.active_blocks.current, before.active_blocks.current);
}

TEST_P(ResourceConformance, OutOfMemoryIsReportedNotCrashed) {
  std::vector<Allocation> held;
  absl::Status last;
  for (int i = 0; i < 10000; ++i) {
    absl::StatusOr<Allocation> a = resource().Allocate(8 << 20);
    if (!a.ok()) {
      last = a.status();
      break;
    }
    held.push_back(*a);
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  for (const Allocation& a : held) ASSERT_TRUE(resource().Deallocate(a).ok());
  absl::StatusOr<Allocation> again = resource().Allocate(8 << 20);
  ASSERT_TRUE(again.ok()) << "memory came back after the frees: " << again.status();
  ASSERT_TRUE(resource().Deallocate(*again).ok());
}

TEST_P(ResourceConformance, BadFreesAreRejectedAndChangeNothing) {
  absl::StatusOr<Allocation> a = resource().Allocate(4096);
  ASSERT_TRUE(a.ok());
  const MemoryStats before = resource().stats();
  int on_stack = 0;
  const Stream s = Default(resource());
  EXPECT_EQ(resource().Deallocate(Allocation{&on_stack, 4, s}).code(),
            absl::StatusCode::kInvalidArgument) << "foreign pointer";
  EXPECT_EQ(resource().Deallocate(Allocation{static_cast<char*>(a->ptr) + 256, 256, s}).code(),
            absl::StatusCode::kInvalidArgument) << "interior pointer";
  EXPECT_EQ(resource().Deallocate(Allocation{nullptr, 4, s}).code(),
            absl::StatusCode::kInvalidArgument) << "null";
  EXPECT_EQ(resource().Deallocate(*a, Stream::Default(resource().device() + 1)).code(),
            absl::StatusCode::kInvalidArgument) << "another device's stream";
  EXPECT_EQ(resource().stats().allocated_bytes.current, before.allocated_bytes.current);
  ASSERT_TRUE(resource().Deallocate(*a).ok());
  EXPECT_EQ(resource().Deallocate(*a).code(), absl::StatusCode::kInvalidArgument) << "double free";
}

}  // namespace
}  // namespace gpualloc::harness
