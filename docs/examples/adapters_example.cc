// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <memory>
#include <memory_resource>
#include <vector>

#include "allocator/adapters/default_allocation.h"
#include "allocator/adapters/pmr_resources.h"
#include "allocator/backend/sim/sim_backend.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, Adapters) {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 256 << 20));
  Context ctx(ContextOptions::SimOnly(sim));
  // [guide]
  // The convenience API: allocate on this thread's current device, free on
  // the allocation's own device whatever is current by then.
  ScopedDevice on(ctx, {DeviceType::kSim, 1});
  Allocation a = Allocate(1 << 20, ctx).value();
  if (absl::Status st = ctx.SetDevice({DeviceType::kSim, 0}); !st.ok()) FAIL() << st;
  if (absl::Status st = Deallocate(a, ctx); !st.ok()) FAIL() << st;

  // Standard containers in page-locked memory.
  auto pinned = std::make_shared<PinnedHostAllocator>(sim);
  PinnedPmrResource pinned_memory(pinned, /*owner=*/0);
  std::pmr::vector<float> staging(4096, 0.0f, &pinned_memory);
  // [/guide]
  EXPECT_EQ(staging.size(), 4096u);
}

}  // namespace
