// BackendResource, the uncached floor: what it counts, what it refuses, and
// that a free the backend fails leaves the block live for a retry.
#include "allocator/resource/backend_resource.h"

#include <memory>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

TEST(BackendResource, CountsEveryCallAndRefusesBadFrees) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  BackendResource raw(sim, 0);
  Allocation a = raw.Allocate(1000).value();
  Allocation b = raw.Allocate(3000).value();
  MemoryStats s = raw.stats();
  EXPECT_EQ(s.allocated_bytes.current, 4000);
  EXPECT_EQ(s.active_blocks.current, 2);
  EXPECT_EQ(s.upstream_allocs, 2u);
  EXPECT_EQ(s.cache_misses, 2u);
  int local = 0;
  const absl::Status foreign = raw.Deallocate(Allocation{&local, 4, Stream::Default(0)});
  EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.message().find("foreign pointer"), absl::string_view::npos) << foreign;
  ASSERT_TRUE(raw.Deallocate(a).ok());
  EXPECT_EQ(raw.Deallocate(a).code(), absl::StatusCode::kInvalidArgument) << "double free";
  s = raw.stats();
  EXPECT_EQ(s.failed_frees, 2u);
  EXPECT_EQ(s.allocated_bytes.current, 3000);
  EXPECT_EQ(s.allocated_bytes.peak, 4000);
  EXPECT_EQ(s.upstream_frees, 1u);
  ASSERT_TRUE(raw.Deallocate(b).ok());
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

TEST(BackendResource, AFreeTheBackendFailsLeavesTheBlockLiveForARetry) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  BackendResource raw(faulty, 0);
  Allocation a = raw.Allocate(4096).value();
  faulty->AddRule(FaultRule::NthCall(BackendOp::kFree, 1, FaultAction::kReturnError));
  EXPECT_FALSE(raw.Deallocate(a).ok());
  EXPECT_EQ(raw.stats().failed_frees, 1u);
  EXPECT_EQ(raw.stats().allocated_bytes.current, 4096) << "still allocated";
  faulty->ClearRules();
  ASSERT_TRUE(raw.Deallocate(a).ok()) << "the retry frees it";
  EXPECT_EQ(raw.stats().allocated_bytes.current, 0);
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
  faulty->AddRule(FaultRule::NthCall(BackendOp::kMalloc, 2, FaultAction::kThrowRuntimeError));  // the 2nd malloc ever
  const absl::Status thrown = raw.Allocate(4096).status();
  EXPECT_EQ(thrown.code(), absl::StatusCode::kInternal) << thrown;
  EXPECT_EQ(raw.stats().allocated_bytes.current, 0);
}

}  // namespace
}  // namespace gpualloc
