#include "allocator/backend/failpoints/failpoint_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/backend/testing/backend_contract.h"
#include "allocator/backend/testing/mock_backend.h"
#include "allocator/common/exception_boundary.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

using ::testing::Return;

std::shared_ptr<SimBackend> Sim() {
  return std::make_shared<SimBackend>(SimOptions::WithDevices(2, 16 << 20));
}

// With no rules the wrapper is transparent: it passes the whole contract.
INSTANTIATE_TEST_SUITE_P(FailpointOverSim, BackendContract,
                         ::testing::Values(BackendFactory{"failpoint(sim)", [] {
                           return std::make_unique<FailpointBackend>(Sim(), 1);
                         }}));

TEST(FailpointBackend, NthCallFailsExactlyOnce) {
  auto sim = Sim();
  FailpointBackend fp(sim, 7);
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 2, FaultAction::kReturnError));
  auto a = fp.Malloc(0, 256);
  auto b = fp.Malloc(0, 256);
  auto c = fp.Malloc(0, 256);
  EXPECT_TRUE(a.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("malloc call #2"), absl::string_view::npos);
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(fp.calls(BackendOp::kMalloc), 3u);
  EXPECT_EQ(fp.faults_fired(), 1u);
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kMalloc), 2u) << "the faulted call never ran";
  ASSERT_TRUE(fp.Free(0, *a).ok());
  ASSERT_TRUE(fp.Free(0, *c).ok());
}

TEST(FailpointBackend, EveryNthCallFails) {
  FailpointBackend fp(Sim(), 7);
  fp.AddRule(FaultRule::EveryNth(BackendOp::kEventCreate, 3, FaultAction::kReturnError));
  std::vector<bool> ok;
  std::vector<Event> events;
  for (int i = 0; i < 9; ++i) {
    auto e = fp.CreateEvent(0);
    ok.push_back(e.ok());
    if (e.ok()) events.push_back(*e);
  }
  EXPECT_EQ(ok, (std::vector<bool>{true, true, false, true, true, false, true, true, false}));
  for (Event e : events) ASSERT_TRUE(fp.DestroyEvent(e).ok());
}

TEST(FailpointBackend, EveryThrowKindIsThrown) {
  FailpointBackend fp(Sim(), 7);
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 1, FaultAction::kThrowBadAlloc));
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 2, FaultAction::kThrowRuntimeError));
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 3, FaultAction::kThrowForeign));
  EXPECT_THROW(fp.Malloc(0, 256).IgnoreError(), std::bad_alloc);
  EXPECT_THROW(fp.Malloc(0, 256).IgnoreError(), std::runtime_error);
  EXPECT_THROW(fp.Malloc(0, 256).IgnoreError(), InjectedForeignFault);
  // The exception boundary turns each into a Status naming the operation.
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 4, FaultAction::kThrowForeign));
  auto st = CallAtBoundary("Malloc", [&] { return fp.Malloc(0, 256); });
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.status().message().find("Malloc"), absl::string_view::npos);
}

TEST(FailpointBackend, PredicateSeesTheArguments) {
  auto sim = Sim();
  FailpointBackend fp(sim, 7);
  fp.AddRule(FaultRule::When(
      BackendOp::kMalloc, [](const CallInfo& c) { return c.bytes > 4096 && c.device == 1; },
      FaultAction::kReturnError));
  auto small = fp.Malloc(1, 4096);
  auto big0 = fp.Malloc(0, 8192);
  auto big1 = fp.Malloc(1, 8192);
  EXPECT_TRUE(small.ok());
  EXPECT_TRUE(big0.ok());
  EXPECT_FALSE(big1.ok());
  ASSERT_TRUE(fp.Free(1, *small).ok());
  ASSERT_TRUE(fp.Free(0, *big0).ok());
  EXPECT_TRUE(sim->Accounting().AllReleased());
}

std::vector<bool> ProbabilityPattern(std::uint64_t seed) {
  FailpointBackend fp(Sim(), seed);
  fp.AddRule(FaultRule::WithProbability(BackendOp::kGetDevice, 0.3, FaultAction::kReturnError));
  std::vector<bool> pattern;
  for (int i = 0; i < 200; ++i) pattern.push_back(fp.GetDevice().ok());
  return pattern;
}

TEST(FailpointBackend, ProbabilisticFaultsAreReproducibleBySeed) {
  const auto a = ProbabilityPattern(123);
  EXPECT_EQ(a, ProbabilityPattern(123));
  EXPECT_NE(a, ProbabilityPattern(124));
  const auto failures = std::count(a.begin(), a.end(), false);
  EXPECT_GT(failures, 30);  // ~60 expected at p = 0.3
  EXPECT_LT(failures, 100);
}

TEST(FailpointBackend, StickyErrorFailsEveryLaterCallUntilCleared) {
  FailpointBackend fp(Sim(), 7);
  fp.AddRule(FaultRule::NthCall(BackendOp::kMemset, 1, FaultAction::kStickyError));
  void* p = fp.Malloc(0, 256).value();
  EXPECT_FALSE(fp.Memset(p, 0, 256).ok());
  EXPECT_FALSE(fp.Malloc(0, 256).ok());
  EXPECT_FALSE(fp.GetDevice().ok());
  fp.ClearStickyError();
  EXPECT_TRUE(fp.Free(0, p).ok());
}

// Bug: host accesses counted as runtime calls: a campaign failing "any call"
// or a lost device would fail the host's own reads and writes, and call
// counts would change with them.
TEST(FailpointBackend, HostAccessesFailOnlyByARuleThatNamesThem) {
  auto sim = Sim();
  FailpointBackend fp(sim, 7);
  void* host = fp.HostAlloc(0, 256).value();
  const std::uint64_t runtime_calls = fp.total_calls();
  fp.AddRule(FaultRule::When(
      std::nullopt, [](const CallInfo&) { return true; }, FaultAction::kReturnError));
  EXPECT_TRUE(fp.NoteHostAccess(host, 256, AccessMode::kWrite).ok()) << "any call: not this";
  fp.ClearRules();
  fp.AddRule(FaultRule::NthCall(BackendOp::kMalloc, 1, FaultAction::kStickyError));
  EXPECT_FALSE(fp.Malloc(0, 256).ok());
  EXPECT_TRUE(fp.NoteHostAccess(host, 256, AccessMode::kRead).ok()) << "a lost device: not this";
  fp.ClearStickyError();
  fp.ClearRules();
  fp.AddRule(FaultRule::NthCall(BackendOp::kHostAccess, 4, FaultAction::kReturnError));
  EXPECT_TRUE(fp.NoteHostAccess(host, 256, AccessMode::kRead).ok());
  const absl::Status named = fp.NoteHostAccess(host, 8, AccessMode::kWrite);
  EXPECT_EQ(named.code(), absl::StatusCode::kResourceExhausted) << named;
  EXPECT_NE(named.message().find("host_access"), absl::string_view::npos) << named;
  EXPECT_EQ(fp.calls(BackendOp::kHostAccess), 4u);
  EXPECT_EQ(fp.total_calls(), runtime_calls + 1) << "the Malloc, not the host accesses";
  EXPECT_TRUE(fp.HostFree(0, host).ok());
}

TEST(FailpointBackend, DelayStallsThenRunsTheCall) {
  FailpointBackend fp(Sim(), 7);
  FaultRule slow = FaultRule::NthCall(BackendOp::kMalloc, 1, FaultAction::kDelay);
  slow.delay = std::chrono::milliseconds(20);
  fp.AddRule(slow);
  const auto start = std::chrono::steady_clock::now();
  auto p = fp.Malloc(0, 256);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(20));
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(fp.Free(0, *p).ok());
}

TEST(FailpointBackend, MaxFiresLimitsARule) {
  FailpointBackend fp(Sim(), 7);
  FaultRule r = FaultRule::EveryNth(BackendOp::kGetDevice, 1, FaultAction::kReturnError);
  r.max_fires = 2;
  fp.AddRule(r);
  EXPECT_FALSE(fp.GetDevice().ok());
  EXPECT_FALSE(fp.GetDevice().ok());
  EXPECT_TRUE(fp.GetDevice().ok());
}

TEST(FailpointBackend, CountsAreExactUnderConcurrentCalls) {
  FailpointBackend fp(Sim(), 7);
  fp.AddRule(FaultRule::EveryNth(BackendOp::kGetDevice, 10, FaultAction::kReturnError));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (!fp.GetDevice().ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(fp.calls(BackendOp::kGetDevice), 4000u);
  EXPECT_EQ(failures.load(), 400);
}

TEST(FailpointBackend, FaultActionNamesRoundTrip) {
  for (FaultAction a : {FaultAction::kReturnError, FaultAction::kThrowBadAlloc,
                        FaultAction::kThrowRuntimeError, FaultAction::kThrowForeign,
                        FaultAction::kDelay, FaultAction::kStickyError}) {
    FaultAction parsed;
    ASSERT_TRUE(ParseFaultAction(FaultActionName(a), &parsed));
    EXPECT_EQ(parsed, a);
  }
  FaultAction unused;
  EXPECT_FALSE(ParseFaultAction("explode", &unused));
}

TEST(MockBackend, ScriptsASingleScenario) {
  MockBackend mock;
  EXPECT_CALL(mock, DeviceCount()).WillOnce(Return(absl::StatusOr<int>(3)));
  EXPECT_EQ(mock.DeviceCount().value(), 3);
}

}  // namespace
}  // namespace gpualloc
