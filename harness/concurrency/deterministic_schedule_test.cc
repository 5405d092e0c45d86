// The deterministic-schedule mode: same seed, same trace; seeds explore
// different interleavings; stream progress (so event completion) is chosen
// adversarially; RecordStream holds under every explored schedule and its
// omission is found and replays from its seed; a deadlock is reported, not
// hung on.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/common/mutex.h"
#include "gtest/gtest.h"
#include "harness/concurrency/deterministic_scheduler.h"
#include "harness/concurrency/scheduled_scenario.h"

namespace gpualloc::harness {
namespace {

ScheduleOptions Seeded(std::uint64_t seed, ScheduleStrategy strategy) {
  ScheduleOptions o;
  o.seed = seed;
  o.strategy = strategy;
  return o;
}

class BothStrategies : public testing::TestWithParam<ScheduleStrategy> {};

TEST_P(BothStrategies, TheSameSeedGivesTheSameTraceHash) {
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    const ScheduleOptions schedule = Seeded(seed, GetParam());
    const ScheduledScenarioOutcome first = RunScheduledScenario(schedule, {});
    const ScheduledScenarioOutcome second = RunScheduledScenario(schedule, {});
    ASSERT_TRUE(first.status.ok()) << first.schedule.Describe(schedule) << ": " << first.status;
    ASSERT_TRUE(second.status.ok()) << second.status;
    EXPECT_EQ(first.schedule.trace_hash, second.schedule.trace_hash)
        << "not deterministic: " << first.schedule.Describe(schedule) << " vs "
        << second.schedule.Describe(schedule);
    EXPECT_EQ(first.schedule.steps, second.schedule.steps);
    EXPECT_GT(first.schedule.switches, 10u) << "the scheduler hardly interleaved anything";
    // main, three threads, three streams and the default stream.
    EXPECT_EQ(first.schedule.participants, 8);
  }
}

TEST_P(BothStrategies, DifferentSeedsExploreDifferentInterleavings) {
  std::set<std::uint64_t> hashes;
  for (std::uint64_t seed = 1; seed <= 8; ++seed) {
    const ScheduleOptions schedule = Seeded(seed, GetParam());
    const ScheduledScenarioOutcome outcome = RunScheduledScenario(schedule, {});
    ASSERT_TRUE(outcome.status.ok()) << outcome.schedule.Describe(schedule) << ": "
                                     << outcome.status;
    hashes.insert(outcome.schedule.trace_hash);
  }
  EXPECT_EQ(hashes.size(), 8u);
}

INSTANTIATE_TEST_SUITE_P(Strategies, BothStrategies,
                         testing::Values(ScheduleStrategy::kRandomWalk, ScheduleStrategy::kPct),
                         [](const auto& info) {
                           return std::string(ScheduleStrategyName(info.param));
                         });

TEST(DeterministicSchedule, InvariantsHoldUnderEveryCrossStreamPolicyAndExpandableSegments) {
  for (CrossStreamReuse policy : {CrossStreamReuse::kNone, CrossStreamReuse::kOpportunistic,
                                  CrossStreamReuse::kFollowEvents}) {
    for (bool expandable : {false, true}) {
      for (std::uint64_t seed = 1; seed <= 6; ++seed) {
        ScheduledScenarioOptions options;
        options.cross_stream = policy;
        options.expandable_segments = expandable;
        options.front_cache_blocks = (seed / 2) % 2 == 1 ? 4 : 0;  // their locks are scheduled too
        options.threads = 2 + static_cast<int>(seed % 3);
        const ScheduleOptions schedule =
            Seeded(seed, seed % 2 ? ScheduleStrategy::kPct : ScheduleStrategy::kRandomWalk);
        const ScheduledScenarioOutcome outcome = RunScheduledScenario(schedule, options);
        EXPECT_TRUE(outcome.status.ok())
            << "policy " << static_cast<int>(policy) << " expandable " << expandable << " "
            << outcome.schedule.Describe(schedule) << ": " << outcome.status;
      }
    }
  }
}

// A block handed to another thread, used there on a side stream, then freed
// and reallocated on its own stream. With RecordStream the allocator keeps it
// back until the side stream's work is done, under every explored schedule;
// without it, whether that work lands on the new owner depends only on which
// stream the scheduler runs first, so some seed catches it, and that seed
// catches it again, identically.
struct HandOff {
  absl::Status status;    // the data check: did the new owner's bytes change?
  absl::Status ordered;   // the stream-order checker's verdict
  ScheduleResult schedule;
};

HandOff RunHandOff(const ScheduleOptions& options, bool record_use) {
  constexpr std::size_t kBytes = 64 << 10;
  DeterministicScheduler scheduler(options);
  HandOff out;
  out.schedule = scheduler.Run([&] {
    SimOptions sim_options;
    sim_options.scheduler = &scheduler;
    auto sim = std::make_shared<SimBackend>(sim_options);
    auto allocator = CachingAllocator::Create(sim, 0, {}).value();
    const Stream a = *sim->CreateStream(0), side = *sim->CreateStream(0);
    void* scratch = *sim->Malloc(0, 256);
    const Allocation x = *allocator->Allocate(kBytes, a);
    ASSERT_TRUE(sim->MemsetAsync(x.ptr, 1, kBytes, a).ok());
    ASSERT_TRUE(sim->SynchronizeStream(a).ok());
    scheduler
        .Spawn("side",
               [&] {
                 if (record_use) {
                   ASSERT_TRUE(allocator->RecordStream(x, side).ok());
                 }
                 for (int i = 0; i < 3; ++i) {  // work queued ahead on a busy stream
                   ASSERT_TRUE(sim->MemsetAsync(scratch, i, 256, side).ok());
                 }
                 ASSERT_TRUE(sim->MemsetAsync(x.ptr, 1, kBytes, side).ok());
               })
        .Join();
    ASSERT_TRUE(allocator->Deallocate(x).ok());
    const Allocation y = *allocator->Allocate(kBytes, a);
    ASSERT_TRUE(sim->MemsetAsync(y.ptr, 2, kBytes, a).ok());
    ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
    std::vector<unsigned char> seen(kBytes);
    ASSERT_TRUE(sim->Memcpy(seen.data(), y.ptr, kBytes, CopyKind::kDeviceToHost).ok());
    const auto stale = std::count(seen.begin(), seen.end(), 1);
    if (stale > 0) {
      out.status = absl::DataLossError(absl::StrCat(
          stale, " bytes of the new allocation were overwritten by the old owner's side-stream "
                 "work (same block: ",
          x.ptr == y.ptr, ")"));
    }
    scheduler.Mix(static_cast<std::uint64_t>(stale));
    out.ordered = sim->CheckStreamOrder();
    ASSERT_TRUE(allocator->Deallocate(y).ok());
    allocator.reset();
    ASSERT_TRUE(sim->DestroyStream(a).ok() && sim->DestroyStream(side).ok());
    ASSERT_TRUE(sim->Free(0, scratch).ok());
    EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
  });
  return out;
}

TEST(DeterministicSchedule, RecordStreamProtectsAHandedOffBlockUnderEveryExploredSchedule) {
  for (std::uint64_t seed = 1; seed <= 60; ++seed) {
    const ScheduleOptions schedule =
        Seeded(seed, seed % 2 ? ScheduleStrategy::kPct : ScheduleStrategy::kRandomWalk);
    const HandOff run = RunHandOff(schedule, /*record_use=*/true);
    EXPECT_TRUE(run.status.ok()) << run.schedule.Describe(schedule) << ": " << run.status;
    EXPECT_TRUE(run.ordered.ok()) << run.schedule.Describe(schedule) << ": " << run.ordered;
  }
}

TEST(DeterministicSchedule, AnUnrecordedSideStreamUseIsFoundAndReplaysFromItsSeed) {
  // Enough seeds that both strategies reach the corrupting order: the free
  // path's own runtime calls (its marker) are scheduling points too.
  constexpr int kSeeds = 200;
  for (ScheduleStrategy strategy : {ScheduleStrategy::kRandomWalk, ScheduleStrategy::kPct}) {
    int found = 0;
    for (std::uint64_t seed = 1; seed <= kSeeds; ++seed) {
      const ScheduleOptions schedule = Seeded(seed, strategy);
      const HandOff run = RunHandOff(schedule, /*record_use=*/false);
      // The checker judges by happens-before, not by what ran first: it
      // reports the unrecorded use under every schedule, naming both sides.
      EXPECT_FALSE(run.ordered.ok()) << run.schedule.Describe(schedule);
      EXPECT_NE(run.ordered.message().find("memset_async"), absl::string_view::npos)
          << run.ordered;
      if (run.status.ok()) continue;
      ++found;
      EXPECT_EQ(run.status.code(), absl::StatusCode::kDataLoss) << run.status;
      const HandOff replay = RunHandOff(schedule, /*record_use=*/false);
      EXPECT_EQ(replay.status, run.status);
      EXPECT_EQ(replay.schedule.trace_hash, run.schedule.trace_hash)
          << run.schedule.Describe(schedule);
    }
    std::fprintf(stderr, "%s: found in %d of %d seeds\n",
                 std::string(ScheduleStrategyName(strategy)).c_str(), found, kSeeds);
    EXPECT_GT(found, 0) << ScheduleStrategyName(strategy)
                        << ": " << kSeeds << " seeds never ran the side stream's work after the reuse";
    EXPECT_LT(found, kSeeds) << "every schedule corrupts: the test no longer depends on the order";
  }
}

// The scheduler, not timing, picks which stream progresses: an event recorded
// later on another stream completes first under some seeds.
TEST(DeterministicSchedule, ALaterEventCompletesFirstUnderSomeSeeds) {
  bool later_first = false, earlier_first = false;
  for (std::uint64_t seed = 1; seed <= 40 && !(later_first && earlier_first); ++seed) {
    DeterministicScheduler scheduler(Seeded(seed, ScheduleStrategy::kRandomWalk));
    scheduler.Run([&] {
      SimOptions options;
      options.scheduler = &scheduler;
      SimBackend sim(options);
      void* p = *sim.Malloc(0, 4096);
      const Stream a = *sim.CreateStream(0), b = *sim.CreateStream(0);
      const Event ea = *sim.CreateEvent(0), eb = *sim.CreateEvent(0);
      ASSERT_TRUE(sim.MemsetAsync(p, 1, 2048, a).ok());
      ASSERT_TRUE(sim.RecordEvent(ea, a).ok());
      ASSERT_TRUE(sim.MemsetAsync(static_cast<char*>(p) + 2048, 2, 2048, b).ok());
      ASSERT_TRUE(sim.RecordEvent(eb, b).ok());
      for (;;) {
        const bool done_a = *sim.QueryEvent(ea), done_b = *sim.QueryEvent(eb);
        if (done_a != done_b) {
          (done_b ? later_first : earlier_first) = true;
          break;
        }
        if (done_a) break;  // both in one step: no order seen
        scheduler.Yield();
      }
      ASSERT_TRUE(sim.DeviceSynchronize(0).ok());
      ASSERT_TRUE(sim.DestroyEvent(ea).ok() && sim.DestroyEvent(eb).ok());
      ASSERT_TRUE(sim.DestroyStream(a).ok() && sim.DestroyStream(b).ok());
      ASSERT_TRUE(sim.Free(0, p).ok());
    });
  }
  EXPECT_TRUE(later_first) << "the later event never completed first";
  EXPECT_TRUE(earlier_first);
}

// A stream waiting on an event (StreamWaitEvent) holds its later work back
// under every schedule.
TEST(DeterministicSchedule, StreamWaitEventOrdersWorkUnderEverySchedule) {
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    DeterministicScheduler scheduler(Seeded(seed, seed % 2 ? ScheduleStrategy::kPct
                                                           : ScheduleStrategy::kRandomWalk));
    scheduler.Run([&] {
      SimOptions options;
      options.scheduler = &scheduler;
      SimBackend sim(options);
      char* p = static_cast<char*>(*sim.Malloc(0, 256));
      const Stream a = *sim.CreateStream(0), b = *sim.CreateStream(0);
      const Event ea = *sim.CreateEvent(0);
      ASSERT_TRUE(sim.MemsetAsync(p, 1, 256, a).ok());
      ASSERT_TRUE(sim.RecordEvent(ea, a).ok());
      ASSERT_TRUE(sim.StreamWaitEvent(b, ea).ok());
      ASSERT_TRUE(sim.MemsetAsync(p, 2, 256, b).ok());
      ASSERT_TRUE(sim.SynchronizeStream(b).ok());
      char seen = 0;
      ASSERT_TRUE(sim.Memcpy(&seen, p + 100, 1, CopyKind::kDeviceToHost).ok());
      EXPECT_EQ(seen, 2) << "seed " << seed << ": stream b's write ran before a's";
      ASSERT_TRUE(sim.DestroyEvent(ea).ok());
      ASSERT_TRUE(sim.DestroyStream(a).ok() && sim.DestroyStream(b).ok());
      ASSERT_TRUE(sim.Free(0, p).ok());
    });
  }
}

// Two threads taking two allocator Mutexes in opposite orders: the scheduler
// finds the interleaving that deadlocks and reports it with its seed.
void RunLockOrderInversionOverSeeds() {
  for (std::uint64_t seed = 1; seed <= 100; ++seed) {
    DeterministicScheduler scheduler(Seeded(seed, ScheduleStrategy::kRandomWalk));
    Mutex first;
    Mutex second;
    scheduler.Run([&] {
      auto ab = scheduler.Spawn("ab", [&] {
        std::lock_guard<Mutex> a(first);
        std::lock_guard<Mutex> b(second);
      });
      auto ba = scheduler.Spawn("ba", [&] {
        std::lock_guard<Mutex> b(second);
        std::lock_guard<Mutex> a(first);
      });
    });
  }
}

TEST(DeterministicScheduleDeathTest, ALockOrderInversionIsReportedAsADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(RunLockOrderInversionOverSeeds(),
               "DEADLOCK at step [0-9]+ \\(seed=[0-9]+ strategy=random\\)(.|\n)*ab: "
               "blocked(.|\n)*ba: blocked");
}

TEST(DeterministicSchedule, StrategyNamesParseBack) {
  EXPECT_EQ(*ParseScheduleStrategy("random"), ScheduleStrategy::kRandomWalk);
  EXPECT_EQ(*ParseScheduleStrategy("pct"), ScheduleStrategy::kPct);
  EXPECT_FALSE(ParseScheduleStrategy("fifo").ok());
}

}  // namespace
}  // namespace gpualloc::harness
