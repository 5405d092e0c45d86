#include "allocator/context/context.h"

#include <atomic>
#include <barrier>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "gtest/gtest.h"
#include "harness/concurrency/deterministic_scheduler.h"

namespace gpualloc {
namespace {

constexpr Device kSim0{DeviceType::kSim, 0};
constexpr Device kSim1{DeviceType::kSim, 1};

std::shared_ptr<SimBackend> Sim(int devices = 2) {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(devices, 16 << 20));
}

TEST(Context, ConcurrentFirstUseCreatesEachRuntimeExactlyOnce) {
  auto sim = Sim();
  Context ctx(ContextOptions::SimOnly(sim));
  constexpr int kThreads = 8;
  std::barrier start(kThreads);
  std::vector<Runtime*> seen0(kThreads), seen1(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();  // maximise the overlap of first uses
      seen0[t] = ctx.GetRuntime(kSim0).value();
      seen1[t] = ctx.GetRuntime(kSim1).value();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(std::set<Runtime*>(seen0.begin(), seen0.end()).size(), 1u);
  EXPECT_EQ(std::set<Runtime*>(seen1.begin(), seen1.end()).size(), 1u);
  EXPECT_NE(seen0[0], seen1[0]);
  EXPECT_EQ(ctx.runtime_count(), 2);
  // Constructing a runtime queries the device twice (the runtime itself and
  // its caching allocator): 2 runtimes, built once each, make 4 queries.
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kDeviceProperties), 4u)
      << "each runtime was constructed once";
}

// The same race, explored rather than hoped for: a deterministic scheduler
// interleaves first uses at every lock, so a check-then-create window is
// found on the same seeds every run, whatever the machine's timing.
TEST(Context, FirstUseCreatesEachRuntimeOnceUnderEveryExploredSchedule) {
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    harness::ScheduleOptions schedule;
    schedule.seed = seed;
    schedule.strategy =
        seed % 2 ? harness::ScheduleStrategy::kPct : harness::ScheduleStrategy::kRandomWalk;
    harness::DeterministicScheduler scheduler(schedule);
    scheduler.Run([&] {
      SimOptions options = SimOptions::WithDevices(1, 16 << 20);
      options.scheduler = &scheduler;
      auto sim = std::make_shared<SimBackend>(options);
      Context ctx(ContextOptions::SimOnly(sim));
      constexpr int kThreads = 3;
      std::vector<Runtime*> seen(kThreads);
      {
        std::vector<harness::DeterministicScheduler::Thread> threads;
        for (int t = 0; t < kThreads; ++t) {
          threads.push_back(scheduler.Spawn("user", [&, t] {
            seen[t] = ctx.GetRuntime(kSim0).value();
          }));
        }
      }
      EXPECT_EQ(std::set<Runtime*>(seen.begin(), seen.end()).size(), 1u) << "seed " << seed;
      EXPECT_EQ(ctx.runtime_count(), 1) << "seed " << seed;
      EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kDeviceProperties), 2u)
          << "seed " << seed << ": the runtime was constructed more than once";
    });
  }
}

TEST(Context, CreationThatThrowsLeavesNoEntryAndALaterCallRetries) {
  auto faulty = std::make_shared<FailpointBackend>(Sim(), 1);
  faulty->AddRule(
      FaultRule::NthCall(BackendOp::kDeviceProperties, 1, FaultAction::kThrowRuntimeError));
  faulty->AddRule(FaultRule::NthCall(BackendOp::kDeviceProperties, 2, FaultAction::kThrowBadAlloc));
  faulty->AddRule(FaultRule::NthCall(BackendOp::kDeviceProperties, 3, FaultAction::kThrowForeign));
  faulty->AddRule(FaultRule::NthCall(BackendOp::kDeviceProperties, 4, FaultAction::kReturnError));
  Context ctx(ContextOptions::SimOnly(faulty));
  for (int attempt = 1; attempt <= 4; ++attempt) {
    absl::StatusOr<Runtime*> rt = ctx.GetRuntime(kSim0);
    ASSERT_FALSE(rt.ok()) << "attempt " << attempt;
    EXPECT_NE(rt.status().message().find("sim:0"), absl::string_view::npos) << rt.status();
    EXPECT_EQ(ctx.runtime_count(), 0) << "no partial entry after attempt " << attempt;
  }
  absl::StatusOr<Runtime*> rt = ctx.GetRuntime(kSim0);
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ((*rt)->device(), kSim0);
  EXPECT_EQ(ctx.runtime_count(), 1);
}

TEST(Context, BackendProviderThatThrowsBecomesAStatus) {
  ContextOptions o;
  o.backends[static_cast<int>(DeviceType::kSim)] =
      []() -> absl::StatusOr<std::shared_ptr<Backend>> { throw std::runtime_error("no driver"); };
  Context ctx(std::move(o));
  absl::StatusOr<Runtime*> rt = ctx.GetRuntime(kSim0);
  ASSERT_FALSE(rt.ok());
  EXPECT_NE(rt.status().message().find("no driver"), absl::string_view::npos);
}

TEST(Context, CurrentDeviceIsPerThread) {
  Context ctx(ContextOptions::SimOnly(Sim()));
  ASSERT_TRUE(ctx.SetDevice(kSim1).ok());
  Device other{};
  std::thread([&] { other = ctx.CurrentDevice(); }).join();
  EXPECT_EQ(other, kSim0) << "another thread starts on the default device";
  EXPECT_EQ(ctx.CurrentDevice(), kSim1);
  EXPECT_EQ(ctx.CurrentRuntime().value()->device(), kSim1);
}

TEST(Context, ConcurrentDeviceSwitchingNeverLeaksAcrossThreads) {
  Context ctx(ContextOptions::SimOnly(Sim()));
  constexpr int kThreads = 6;
  std::barrier start(kThreads);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < 500; ++i) {
        const Device want{DeviceType::kSim, (t + i) % 2};
        if (!ctx.SetDevice(want).ok()) ++wrong;
        std::this_thread::yield();
        if (ctx.CurrentDevice() != want) ++wrong;
        if (ctx.CurrentRuntime().value()->device() != want) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Context, ScopedDeviceRestoresEvenWhenTheBodyThrows) {
  Context ctx(ContextOptions::SimOnly(Sim()));
  try {
    ScopedDevice on(ctx, kSim1);
    ASSERT_TRUE(on.status().ok());
    EXPECT_EQ(ctx.CurrentDevice(), kSim1);
    throw std::runtime_error("body failed");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(ctx.CurrentDevice(), kSim0);
}

TEST(Context, InvalidDeviceIsRejectedAndTheCurrentDeviceIsUnchanged) {
  Context ctx(ContextOptions::SimOnly(Sim()));
  ASSERT_TRUE(ctx.SetDevice(kSim1).ok());
  absl::Status st = ctx.SetDevice({DeviceType::kSim, 5});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("simErrorInvalidDevice"), absl::string_view::npos) << st;
  EXPECT_EQ(ctx.CurrentDevice(), kSim1);
  ScopedDevice bad(ctx, {DeviceType::kSim, 7});
  EXPECT_FALSE(bad.status().ok());
  EXPECT_EQ(ctx.CurrentDevice(), kSim1);
  EXPECT_EQ(ctx.GetRuntime({DeviceType::kSim, -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status no_provider = ctx.GetRuntime({DeviceType::kCuda, 0}).status();
  EXPECT_EQ(no_provider.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_provider.message().find("no backend is configured"), absl::string_view::npos);
}

TEST(Context, RuntimeLimitIsEnforced) {
  ContextOptions o = ContextOptions::SimOnly(Sim());
  o.max_runtimes = 1;
  o.max_device_index = 2;
  Context ctx(std::move(o));
  ASSERT_TRUE(ctx.GetRuntime(kSim0).ok());
  absl::Status st = ctx.GetRuntime(kSim1).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("limit of 1 runtimes"), absl::string_view::npos) << st;
  EXPECT_EQ(ctx.GetRuntime({DeviceType::kSim, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ctx.GetRuntime(kSim0).ok()) << "existing runtimes still served";
}

// The leak report used to keep every tracked allocator alive until exit, so
// a destroyed context still held its device memory.
TEST(Context, ALeakReportIsGivenWhenTheContextGoesAndItsMemoryIsReleased) {
  auto sim = Sim();
  ContextOptions o = ContextOptions::SimOnly(sim);
  o.track_allocations = true;
  o.leak_report_at_exit = true;
  {
    Context ctx(std::move(o));
    Runtime* runtime = ctx.GetRuntime(kSim0).value();
    ASSERT_TRUE(runtime->resource().Allocate(3 << 20).ok());  // never freed: a leak
    ::testing::internal::CaptureStderr();
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("gpualloc leak report:"), std::string::npos) << err;
  EXPECT_NE(err.find("1 leaked allocations (3.0 MiB)"), std::string::npos) << err;
  const SimAccounting acc = sim->Accounting();
  EXPECT_EQ(acc.devices[0].device_bytes, 0u) << "the context's memory went back: " << acc.Describe();
}

TEST(Context, StandardOptionsReachTheRealRuntimesAndReportNoDevice) {
  Context ctx(ContextOptions::Standard());
  EXPECT_TRUE(ctx.GetRuntime(kSim1).ok());
  absl::StatusOr<Runtime*> cuda = ctx.GetRuntime({DeviceType::kCuda, 0});
  if (!cuda.ok()) {
    EXPECT_NE(cuda.status().message().find("no CUDA device"), absl::string_view::npos)
        << cuda.status();
  }
}

TEST(DefaultContext, IsOneInstanceForAllThreadsAndCannotBeReconfiguredAfterUse) {
  std::vector<Context*> seen(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { seen[t] = &DefaultContext(); });
  for (auto& th : threads) th.join();
  EXPECT_EQ(std::set<Context*>(seen.begin(), seen.end()).size(), 1u);
  EXPECT_EQ(ConfigureDefaultContext(ContextOptions::Standard()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(DefaultContext().GetRuntime(kSim0).ok());
}

}  // namespace
}  // namespace gpualloc
