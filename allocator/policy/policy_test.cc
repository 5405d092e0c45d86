#include <atomic>
#include <thread>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/policy/allocation_tag.h"
#include "allocator/policy/limiting_adaptor.h"
#include "allocator/policy/pressure_adaptor.h"
#include "gtest/gtest.h"
#include "harness/testing/failing_memory_resource.h"

namespace gpualloc {
namespace {

constexpr std::size_t kMiB = 1 << 20;

std::shared_ptr<CachingAllocator> Cache(std::size_t capacity = 256 * kMiB) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, capacity));
  return CachingAllocator::Create(sim, 0, {}).value();
}

TEST(AllocationTag, IsScopedAndPerThread) {
  EXPECT_EQ(CurrentAllocationTag(), "");
  {
    ScopedAllocationTag outer("model");
    {
      ScopedAllocationTag inner("kv-cache");
      EXPECT_EQ(CurrentAllocationTag(), "kv-cache");
      std::string other = "unset";
      std::thread([&] { other = std::string(CurrentAllocationTag()); }).join();
      EXPECT_EQ(other, "");
    }
    EXPECT_EQ(CurrentAllocationTag(), "model");
  }
  EXPECT_EQ(CurrentAllocationTag(), "");
}

TEST(LimitingAdaptor, HardResourceLimitRefusesAndChangesNothing) {
  auto cache = Cache();
  LimitingAdaptor limited(cache, {{LimitScope::kResource, 10 * kMiB, LimitMode::kHard}});
  Allocation a = limited.Allocate(6 * kMiB).value();
  const MemoryStats before = cache->stats();
  absl::StatusOr<Allocation> b = limited.Allocate(5 * kMiB);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("hard resource limit of 10485760"), absl::string_view::npos)
      << b.status();
  EXPECT_EQ(cache->stats().allocated_bytes.current, before.allocated_bytes.current)
      << "the upstream was not called";
  EXPECT_EQ(limited.InUse(0, "resource"), 6 * kMiB);
  ASSERT_TRUE(limited.Deallocate(a).ok());
  EXPECT_EQ(limited.InUse(0, "resource"), 0u);
  absl::StatusOr<Allocation> full = limited.Allocate(10 * kMiB);
  ASSERT_TRUE(full.ok()) << "exactly the limit fits: " << full.status();
  ASSERT_TRUE(limited.Deallocate(*full).ok());
}

TEST(LimitingAdaptor, PerTagLimitsAreSeparateAndChargedToTheAllocatingTag) {
  auto cache = Cache();
  LimitingAdaptor limited(cache, {{LimitScope::kTag, 4 * kMiB, LimitMode::kHard}});
  Allocation a, b;
  {
    ScopedAllocationTag t("tenant-a");
    a = limited.Allocate(3 * kMiB).value();
    EXPECT_FALSE(limited.Allocate(2 * kMiB).ok()) << "tenant-a is full";
  }
  {
    ScopedAllocationTag t("tenant-b");
    b = limited.Allocate(3 * kMiB).value();  // its own budget
  }
  // Freed from an untagged thread: still credited back to tenant-a.
  absl::Status freed;
  std::thread([&] { freed = limited.Deallocate(a); }).join();
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(limited.InUse(0, "tenant-a"), 0u);
  EXPECT_EQ(limited.InUse(0, "tenant-b"), 3 * kMiB);
  ASSERT_TRUE(limited.Deallocate(b).ok());
}

TEST(LimitingAdaptor, EveryMetadataAllocationFailureChangesNoCounterAndLeaksNothing) {
  // Each allocation of the counters and the charge table fails in turn (new
  // tags make new counters): the Allocate that meets it fails, every counter
  // and the upstream are as before, and a retry succeeds.
  std::uint64_t k = 1;
  for (;; ++k) {
    auto cache = Cache();
    harness::FailingMemoryResource metadata;
    {
      LimitingAdaptor limited(cache,
                              {{LimitScope::kResource, 64 * kMiB, LimitMode::kHard},
                               {LimitScope::kTag, 8 * kMiB, LimitMode::kSoft}},
                              {}, &metadata);
      std::vector<Allocation> live;
      metadata.FailAt(k);
      for (const char* tag : {"tenant-a", "tenant-b", "tenant-a"}) {
        SCOPED_TRACE(testing::Message() << tag << ", failure at allocation " << k);
        ScopedAllocationTag scope(tag);
        const std::size_t whole = limited.InUse(0, "resource");
        const std::size_t mine = limited.InUse(1, tag);
        const std::int64_t upstream = cache->stats().allocated_bytes.current;
        const std::uint64_t failed = metadata.failures();
        absl::StatusOr<Allocation> a = limited.Allocate(1 * kMiB);
        if (!a.ok()) {
          EXPECT_EQ(metadata.failures(), failed + 1) << a.status();
          EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
          EXPECT_EQ(limited.InUse(0, "resource"), whole);
          EXPECT_EQ(limited.InUse(1, tag), mine);
          EXPECT_EQ(cache->stats().allocated_bytes.current, upstream) << "upstream memory kept";
          a = limited.Allocate(1 * kMiB);
        }
        ASSERT_TRUE(a.ok()) << a.status();
        live.push_back(*a);
      }
      EXPECT_EQ(limited.InUse(0, "resource"), 3 * kMiB);
      EXPECT_EQ(limited.InUse(1, "tenant-a"), 2 * kMiB);
      for (const Allocation& a : live) ASSERT_TRUE(limited.Deallocate(a).ok());
      EXPECT_EQ(limited.InUse(0, "resource"), 0u);
    }
    EXPECT_EQ(metadata.outstanding_bytes(), 0u) << "metadata leaked at k=" << k;
    ASSERT_FALSE(HasFailure()) << "first failure at k=" << k;
    if (metadata.failures() == 0) break;
  }
  EXPECT_GE(k, 5u) << "counters and charge entries must all have been failed";
}

TEST(LimitingAdaptor, OnlyTagRuleAppliesToThatTagAlone) {
  auto cache = Cache();
  LimitingAdaptor limited(cache, {{LimitScope::kTag, 1 * kMiB, LimitMode::kHard, "small"}});
  Allocation big = limited.Allocate(8 * kMiB).value();  // untagged: no limit
  Allocation other;
  {
    ScopedAllocationTag o("other");
    other = limited.Allocate(4 * kMiB).value();  // another tag: no limit either
  }
  ScopedAllocationTag t("small");
  EXPECT_FALSE(limited.Allocate(2 * kMiB).ok());
  Allocation fits = limited.Allocate(1 * kMiB).value() ;  // nothing else counted against "small"
  ASSERT_TRUE(limited.Deallocate(fits).ok());
  ASSERT_TRUE(limited.Deallocate(other).ok());
  ASSERT_TRUE(limited.Deallocate(big).ok());
}

TEST(LimitingAdaptor, PerThreadLimitsCountEachThread) {
  auto cache = Cache();
  LimitingAdaptor limited(cache, {{LimitScope::kThread, 2 * kMiB, LimitMode::kHard}});
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      Allocation a = limited.Allocate(2 * kMiB).value();
      if (!limited.Allocate(1).ok()) ++refused;
      EXPECT_TRUE(limited.Deallocate(a).ok());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(refused.load(), 3);
}

TEST(LimitingAdaptor, SoftLimitLetsTheRequestThroughAndCallsForReclaim) {
  auto cache = Cache();
  std::vector<SoftLimitEvent> events;
  LimitingAdaptor limited(cache, {{LimitScope::kResource, 4 * kMiB, LimitMode::kSoft}},
                          [&](const SoftLimitEvent& e) {
                            events.push_back(e);
                            EXPECT_TRUE(cache->EmptyCache().ok());  // no lock is held here
                          });
  Allocation a = limited.Allocate(3 * kMiB).value();
  Allocation b = limited.Allocate(3 * kMiB).value();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].in_use, 6 * kMiB);
  EXPECT_EQ(events[0].requested, 3 * kMiB);
  ASSERT_TRUE(limited.Deallocate(a).ok());
  ASSERT_TRUE(limited.Deallocate(b).ok());
}

TEST(LimitingAdaptor, UpstreamFailureGivesTheReservationBack) {
  auto cache = Cache(32 * kMiB);
  LimitingAdaptor limited(cache, {{LimitScope::kResource, 1ull << 40, LimitMode::kHard}});
  EXPECT_FALSE(limited.Allocate(64 * kMiB).ok());
  EXPECT_EQ(limited.InUse(0, "resource"), 0u);
  int x = 0;
  EXPECT_EQ(limited.Deallocate(Allocation{&x, 4, Stream::Default(0)}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PressureAdaptor, LevelsRiseWithUtilisationAndReactionsRunOnTheWayUp) {
  auto cache = Cache(100 * kMiB);
  std::vector<PressureLevel> seen;
  PressureOptions o;
  o.capacity_bytes = 100 * kMiB;
  o.reactions = {PressureReaction::kNone, PressureReaction::kCallback, PressureReaction::kCallback,
                 PressureReaction::kShrinkCache, PressureReaction::kCallback};
  o.callback = [&](PressureLevel level, const MemoryStats&) { seen.push_back(level); };
  o.shrink = [&](std::size_t keep) { return cache->EmptyCache(keep); };
  auto p = PressureAdaptor::Create(cache, o).value();
  EXPECT_EQ(p->level(), PressureLevel::kNormal);
  Allocation a = p->Allocate(40 * kMiB).value();
  EXPECT_EQ(p->level(), PressureLevel::kNormal);
  Allocation b = p->Allocate(20 * kMiB).value();  // 60 reserved
  EXPECT_EQ(p->level(), PressureLevel::kElevated);
  Allocation c = p->Allocate(12 * kMiB).value();  // 72
  EXPECT_EQ(p->level(), PressureLevel::kWarning);
  EXPECT_EQ(seen, (std::vector<PressureLevel>{PressureLevel::kElevated, PressureLevel::kWarning}));
  ASSERT_TRUE(p->Deallocate(b).ok());  // cached: reserved stays 72
  EXPECT_EQ(p->level(), PressureLevel::kWarning);
  EXPECT_EQ(seen.size(), 2u) << "staying at a level runs no reaction again";
  // 21 MiB does not fit the cached 20 MiB block: a 22 MiB segment makes 94
  // reserved, Critical, and the reaction returns the cached 20 MiB.
  Allocation d = p->Allocate(21 * kMiB).value();
  EXPECT_EQ(cache->stats().reserved_bytes.current, static_cast<std::int64_t>(74 * kMiB))
      << "the cached 20 MiB went back";
  EXPECT_LT(p->level(), PressureLevel::kCritical);
  for (const Allocation& x : {a, c, d}) ASSERT_TRUE(p->Deallocate(x).ok());
  EXPECT_GE(p->reactions_run(), 3u);
}

TEST(PressureAdaptor, ReactionMayAllocateThroughTheAdaptorWithoutRecursing) {
  auto cache = Cache(100 * kMiB);
  PressureAdaptor* self = nullptr;
  int calls = 0;
  PressureOptions o;
  o.capacity_bytes = 100 * kMiB;
  o.reactions[1] = PressureReaction::kCallback;
  o.callback = [&](PressureLevel, const MemoryStats&) {
    ++calls;
    Allocation x = self->Allocate(30 * kMiB).value();  // would raise the level again
    EXPECT_TRUE(self->Deallocate(x).ok());
  };
  auto p = PressureAdaptor::Create(cache, o).value();
  self = p.get();
  Allocation a = p->Allocate(55 * kMiB).value();
  EXPECT_EQ(calls, 1);
  ASSERT_TRUE(p->Deallocate(a).ok());
}

TEST(PressureAdaptor, BadOptionsAreRejected) {
  auto cache = Cache();
  PressureOptions o;
  EXPECT_FALSE(PressureAdaptor::Create(cache, o).ok()) << "no capacity";
  o.capacity_bytes = kMiB;
  o.thresholds = {0.5, 0.4, 0.9, 0.95};
  EXPECT_FALSE(PressureAdaptor::Create(cache, o).ok()) << "not increasing";
  o.thresholds = {0.5, 0.7, 0.9, 1.0};
  EXPECT_TRUE(PressureAdaptor::Create(cache, o).ok()) << "1 is the last allowed threshold";
  o.thresholds = {0.5, 0.7, 0.9, 1.01};
  EXPECT_FALSE(PressureAdaptor::Create(cache, o).ok()) << "over 1";
  o.thresholds = {0.5, 0.7, 0.9, 1.0};
  for (double ok_target : {0.0, 1.0}) {
    o.shrink_target = ok_target;
    EXPECT_TRUE(PressureAdaptor::Create(cache, o).ok()) << ok_target;
  }
  for (double bad_target : {-0.01, 1.01}) {
    o.shrink_target = bad_target;
    EXPECT_FALSE(PressureAdaptor::Create(cache, o).ok()) << bad_target;
  }
}

// `only_tag` narrows tag rules alone: a resource rule that names a tag still
// limits everything.
TEST(LimitingAdaptor, OnlyTagDoesNotNarrowAResourceRule) {
  auto cache = Cache();
  LimitingAdaptor limited(cache, {{LimitScope::kResource, 1 * kMiB, LimitMode::kHard, "small"}});
  EXPECT_FALSE(limited.Allocate(2 * kMiB).ok()) << "untagged, yet over the resource limit";
}

}  // namespace
}  // namespace gpualloc
