#include <atomic>
#include <cstdint>
#include <memory_resource>
#include <new>
#include <thread>
#include <vector>

#include "allocator/adapters/default_allocation.h"
#include "allocator/adapters/pmr_resources.h"
#include "allocator/backend/sim/sim_backend.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(DefaultAllocation, AllocatesOnTheThreadsDeviceAndFreesOnTheAllocationsOwn) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 64 << 20));
  Context ctx(ContextOptions::SimOnly(sim));
  ASSERT_TRUE(ctx.SetDevice({DeviceType::kSim, 1}).ok());
  Allocation a = Allocate(4096, ctx).value();
  EXPECT_EQ(a.device(), 1);
  ASSERT_TRUE(ctx.SetDevice({DeviceType::kSim, 0}).ok());  // device A's memory, B current
  ASSERT_TRUE(Deallocate(a, ctx).ok());
  EXPECT_EQ(ctx.GetRuntime({DeviceType::kSim, 1}).value()->allocator()->stats().allocated_bytes.current, 0);
  EXPECT_FALSE(Allocate(4096, Stream::Default(1), ctx).ok()) << "a stream of another device";
}

// The device type used to come from the thread's current device: memory of
// one type freed while a device of another type was current went to the
// wrong runtime. Two runtimes here: the sim type, and the CUDA type served by
// a second simulated device.
TEST(DefaultAllocation, FreesOnTheOwnersTypeWhateverTypeIsCurrent) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto as_cuda = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  ContextOptions o = ContextOptions::SimOnly(sim);
  o.backends[static_cast<int>(DeviceType::kCuda)] =
      [as_cuda]() -> absl::StatusOr<std::shared_ptr<Backend>> { return as_cuda; };
  Context ctx(std::move(o));
  ASSERT_TRUE(ctx.SetDevice({DeviceType::kSim, 0}).ok());
  Allocation on_sim = Allocate(4096, ctx).value();
  ASSERT_TRUE(ctx.SetDevice({DeviceType::kCuda, 0}).ok());
  Allocation on_cuda = Allocate(8192, ctx).value();
  ASSERT_TRUE(Deallocate(on_sim, ctx).ok()) << "the sim device's memory, the CUDA device current";
  ASSERT_TRUE(ctx.SetDevice({DeviceType::kSim, 0}).ok());
  ASSERT_TRUE(Deallocate(on_cuda, ctx).ok()) << "and the other way round";
  for (DeviceType type : {DeviceType::kSim, DeviceType::kCuda}) {
    EXPECT_EQ(ctx.GetRuntime({type, 0}).value()->allocator()->stats().allocated_bytes.current, 0);
  }
  const absl::Status twice = Deallocate(on_cuda, ctx);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument) << twice;
  EXPECT_NE(twice.message().find("not a live allocation"), absl::string_view::npos) << twice;
}

TEST(DefaultAllocation, IsThreadSafeAndPerThreadDeviceCorrect) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 256 << 20));
  Context ctx(ContextOptions::SimOnly(sim));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const DeviceIndex mine = t % 2;
      if (!ctx.SetDevice({DeviceType::kSim, mine}).ok()) ++wrong;
      for (int i = 0; i < 200; ++i) {
        absl::StatusOr<Allocation> a = Allocate(512 + i * 64, ctx);
        if (!a.ok() || a->device() != mine) {
          ++wrong;
          continue;
        }
        if (!ctx.SetDevice({DeviceType::kSim, 1 - mine}).ok()) ++wrong;  // switch, then free
        if (!Deallocate(*a, ctx).ok()) ++wrong;
        if (!ctx.SetDevice({DeviceType::kSim, mine}).ok()) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  for (DeviceIndex d : {0, 1}) {
    EXPECT_EQ(ctx.GetRuntime({DeviceType::kSim, d}).value()->allocator()->stats().allocated_bytes.current, 0);
  }
}

TEST(PmrResources, StandardContainersLiveInPinnedAndManagedMemory) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto pinned = std::make_shared<PinnedHostAllocator>(sim);
  PinnedPmrResource pinned_pmr(pinned, 0);
  {
    std::pmr::vector<int> v(&pinned_pmr);
    for (int i = 0; i < 100000; ++i) v.push_back(i);
    EXPECT_EQ(v[99999], 99999);
    EXPECT_GT(pinned->stats().live_bytes, 0u);
  }
  EXPECT_EQ(pinned->stats().live_bytes, 0u);
  EXPECT_THROW((void)pinned_pmr.allocate(64, 4096), std::bad_alloc) << "over-aligned";
  EXPECT_THROW((void)pinned_pmr.allocate(64, 512), std::bad_alloc) << "over-aligned";
  void* widest = pinned_pmr.allocate(64, 256);  // the widest alignment served
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(widest) % 256, 0u);
  pinned_pmr.deallocate(widest, 64, 256);
  ManagedPmrResource managed(sim, 0);
  EXPECT_THROW((void)managed.allocate(64, 512), std::bad_alloc) << "over-aligned";
  widest = managed.allocate(64, 256);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(widest) % 256, 0u);
  managed.deallocate(widest, 64, 256);
  {
    std::pmr::vector<double> m(1000, 2.5, &managed);
    EXPECT_EQ(m[999], 2.5);
    EXPECT_GT(sim->Accounting().devices[0].managed_bytes, 0u);
  }
  EXPECT_EQ(sim->Accounting().devices[0].managed_bytes, 0u);
  EXPECT_TRUE(pinned_pmr.is_equal(pinned_pmr));
  EXPECT_FALSE(pinned_pmr.is_equal(managed));
}

}  // namespace
}  // namespace gpualloc
