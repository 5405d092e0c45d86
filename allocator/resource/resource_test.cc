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

// MemoryResource's own checks, before any resource sees the call: each
// refusal names what was wrong, and changes nothing (bugs: a check dropped
// or its message swapped for another's).
TEST(BackendResource, TheBoundaryRefusesBadCallsNamingWhatWasWrong) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(2, 64 << 20));
  BackendResource raw(sim, 0);
  Allocation live = raw.Allocate(1000).value();
  auto expect_refused = [](const absl::Status& st, absl::string_view names) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(names), absl::string_view::npos) << st;
  };
  expect_refused(raw.Allocate(0).status(), "zero-byte allocation");
  expect_refused(raw.Allocate(256, Stream::Default(1)).status(), "on a stream of device 1");
  expect_refused(raw.Deallocate(Allocation{nullptr, 8, Stream::Default(0)}), "null pointer");
  expect_refused(raw.Deallocate(live, Stream::Default(1)), "on a stream of device 1");
  expect_refused(raw.Deallocate(Allocation{live.ptr, live.bytes, Stream::Default(1)},
                                Stream::Default(0)),
                 "(device 1) on a stream of device 0");
  const MemoryStats s = raw.stats();
  EXPECT_EQ(s.upstream_allocs, 1u) << "a refused allocation reaches no backend";
  EXPECT_EQ(s.failed_frees, 0u) << "a refused free reaches no resource";
  EXPECT_EQ(s.allocated_bytes.current, 1000);
  ASSERT_TRUE(raw.Deallocate(live).ok());
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
