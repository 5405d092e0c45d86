#include <cstdio>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/transfer/event_pool.h"
#include "allocator/transfer/staging_pipeline.h"
#include "allocator/transfer/transfers.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

struct Env {
  explicit Env(SimCostModel cost = {}) {
    SimOptions o = SimOptions::WithDevices(2, 128 << 20);
    o.cost = cost;
    sim = std::make_shared<SimBackend>(o);
    cache = CachingAllocator::Create(sim, 0, {}).value();
    cache1 = CachingAllocator::Create(sim, 1, {}).value();
  }
  std::shared_ptr<SimBackend> sim;
  std::shared_ptr<CachingAllocator> cache, cache1;
};

std::vector<unsigned char> Pattern(std::size_t n, int seed) {
  std::vector<unsigned char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>(i * 13 + seed);
  return v;
}

TEST(Transfers, CopiesAndFillsRoundTripByteForByte) {
  Env env;
  Transfers t(env.sim);
  const Stream s = Stream::Default(0);
  DeviceBuffer a = DeviceBuffer::Create(env.cache, 100000, s).value();
  SharedMemory b = SharedMemory::Allocate(env.cache, 100000, s).value();
  const std::vector<unsigned char> in = Pattern(100000, 5);
  absl::Status up = t.ToDeviceSync(Span(a), 0, in.data(), in.size(), s);
  ASSERT_TRUE(up.ok()) << up;
  ASSERT_TRUE(t.DeviceToDevice(Span(b), 0, Span(a), 0, in.size(), s).value().Wait().ok());
  ASSERT_TRUE(t.Fill(Span(b), 1000, 0xEE, 500, s).value().Wait().ok());
  std::vector<unsigned char> out(100000);
  ASSERT_TRUE(t.ToHostSync(out.data(), Span(b), 0, out.size(), s).ok());
  std::vector<unsigned char> want = in;
  std::fill(want.begin() + 1000, want.begin() + 1500, 0xEE);
  EXPECT_EQ(out, want);
  // Offsets into a view of shared memory.
  SharedMemory view = b.View(50000, 100).value();
  std::vector<unsigned char> part(100);
  ASSERT_TRUE(t.ToHostSync(part.data(), Span(view), 0, 100, s).ok());
  EXPECT_TRUE(std::equal(part.begin(), part.end(), in.begin() + 50000));
}

TEST(Transfers, AsynchronousWithNoHiddenSynchronisation) {
  SimCostModel cost;
  cost.copy_ns_per_kib = 20'000;  // 1 MiB ~ 20 ms
  Env env(cost);
  Transfers t(env.sim);
  Stream s1 = env.sim->CreateStream(0).value();
  Stream s2 = env.sim->CreateStream(0).value();
  DeviceBuffer a = DeviceBuffer::Create(env.cache, 1 << 20, s1).value();
  DeviceBuffer b = DeviceBuffer::Create(env.cache, 1 << 20, s2).value();
  std::vector<unsigned char> in = Pattern(1 << 20, 9);
  Completion c = t.ToDevice(Span(a), 0, in.data(), in.size(), s1).value();
  EXPECT_FALSE(c.Done().value()) << "the call returned before the copy finished";
  ASSERT_TRUE(c.Then(s2).ok());  // s2's copy waits for s1's, on the device
  Completion d = t.DeviceToDevice(Span(b), 0, Span(a), 0, in.size(), s2).value();
  ASSERT_TRUE(d.Wait().ok());
  EXPECT_TRUE(c.Done().value());
  std::vector<unsigned char> out(in.size());
  ASSERT_TRUE(t.ToHostSync(out.data(), Span(b), 0, out.size(), s2).ok());
  EXPECT_EQ(out, in);
  a.set_stream(s2);  // now used on s2 too
  a.Reset().IgnoreError();
  b.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(s1).ok());
  ASSERT_TRUE(env.sim->DestroyStream(s2).ok());
}

TEST(Transfers, BadInputIsAnErrorNeverACorruption) {
  Env env;
  Transfers t(env.sim);
  const Stream s0 = Stream::Default(0);
  DeviceBuffer a = DeviceBuffer::Create(env.cache, 4096, s0).value();
  DeviceBuffer other = DeviceBuffer::Create(env.cache1, 4096, Stream::Default(1)).value();
  std::vector<unsigned char> host(8192);
  EXPECT_EQ(t.ToDevice(Span(a), 0, host.data(), 4097, s0).status().code(),
            absl::StatusCode::kInvalidArgument) << "past the end";
  EXPECT_FALSE(t.ToDevice(Span(a), 4000, host.data(), 100, s0).ok()) << "offset + size past the end";
  EXPECT_FALSE(t.ToHost(host.data(), Span(a), ~std::size_t{0} - 5, 10, s0).ok()) << "wraps";
  EXPECT_FALSE(t.ToHost(host.data(), Span(a), 0, 16, Stream::Default(1)).ok()) << "wrong device";
  EXPECT_FALSE(t.DeviceToDevice(Span(a), 0, Span(other), 0, 16, s0).ok()) << "across devices";
  EXPECT_FALSE(t.ToHost(nullptr, Span(a), 0, 16, s0).ok());
  DeviceBuffer freed = DeviceBuffer::Create(env.cache, 4096, s0).value();
  ASSERT_TRUE(freed.Reset().ok());
  absl::StatusOr<Completion> from_freed = t.ToHost(host.data(), Span(freed), 0, 16, s0);
  ASSERT_FALSE(from_freed.ok());
  EXPECT_NE(from_freed.status().message().find("freed"), absl::string_view::npos);
}

// A backend call that fails inside a transfer is the transfer's error, never
// swallowed: each call each operation makes is failed in turn.
TEST(Transfers, EveryFailedBackendCallIsReturned) {
  Env env;
  auto faulty = std::make_shared<FailpointBackend>(env.sim, 1);
  Transfers t(faulty);
  const Stream s = Stream::Default(0);
  DeviceBuffer a = DeviceBuffer::Create(env.cache, 4096, s).value();
  DeviceBuffer b = DeviceBuffer::Create(env.cache, 4096, s).value();
  std::vector<unsigned char> host(4096, 7);
  const std::vector<std::pair<const char*, std::function<absl::Status()>>> operations = {
      {"ToDevice", [&] { return t.ToDevice(Span(a), 0, host.data(), 4096, s).status(); }},
      {"ToHost", [&] { return t.ToHost(host.data(), Span(a), 0, 4096, s).status(); }},
      {"DeviceToDevice", [&] { return t.DeviceToDevice(Span(b), 0, Span(a), 0, 4096, s).status(); }},
      {"Fill", [&] { return t.Fill(Span(a), 0, 1, 4096, s).status(); }},
      {"ToDeviceSync", [&] { return t.ToDeviceSync(Span(a), 0, host.data(), 4096, s); }},
      {"ToHostSync", [&] { return t.ToHostSync(host.data(), Span(a), 0, 4096, s); }},
  };
  int faults_seen = 0;
  for (const auto& [name, run] : operations) {
    for (int op = 0; op < kBackendOpCount; ++op) {
      // The completion's event is destroyed by its destructor, which has no
      // caller to return to.
      if (static_cast<BackendOp>(op) == BackendOp::kEventDestroy) continue;
      faulty->ClearRules();
      faulty->AddRule(FaultRule::EveryNth(static_cast<BackendOp>(op), 1, FaultAction::kReturnError));
      const std::uint64_t fired = faulty->faults_fired();
      const absl::Status st = run();
      faulty->ClearRules();
      if (faulty->faults_fired() == fired) continue;  // this operation makes no such call
      ++faults_seen;
      EXPECT_FALSE(st.ok()) << name << ": the failed call of op " << op << " was swallowed";
    }
  }
  EXPECT_GE(faults_seen, 12) << "each operation copies or fills and records an event";
  ASSERT_TRUE(env.sim->SynchronizeStream(s).ok());
}

TEST(StagingPipeline, AFailedWaitOnTheProducerIsReturned) {
  Env env;
  auto faulty = std::make_shared<FailpointBackend>(env.sim, 1);
  auto pinned = std::make_shared<PinnedHostAllocator>(env.sim);
  auto pipeline = StagingPipeline::Create(faulty, pinned, 0, 4096).value();
  Stream compute = env.sim->CreateStream(0).value();
  DeviceBuffer batch = DeviceBuffer::Create(env.cache, 4096, compute).value();
  std::vector<unsigned char> out(4096);
  faulty->AddRule(FaultRule::EveryNth(BackendOp::kStreamWaitEvent, 1, FaultAction::kReturnError));
  EXPECT_FALSE(pipeline->Submit(Span(batch), compute, out.data()).ok())
      << "the copy cannot be ordered after the producer: it must not run";
  faulty->ClearRules();
  ASSERT_TRUE(pipeline->Finish().ok());
  pipeline.reset();
  batch.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(compute).ok());
}

TEST(StagingPipeline, StreamsBatchesToTheHostWhileTheNextOnesCompute) {
  SimCostModel cost;
  cost.copy_ns_per_kib = 4'000;  // 256 KiB ~ 1 ms per copy
  Env env(cost);
  auto pinned = std::make_shared<PinnedHostAllocator>(env.sim);
  constexpr std::size_t kBatch = 256 * 1024;
  constexpr int kBatches = 6;
  auto pipeline = StagingPipeline::Create(env.sim, pinned, 0, kBatch).value();
  Transfers t(env.sim);
  Stream compute = env.sim->CreateStream(0).value();
  DeviceBuffer input = DeviceBuffer::Create(env.cache, kBatch, compute).value();
  std::vector<DeviceBuffer> results;
  std::vector<std::vector<unsigned char>> expected, outputs(kBatches, std::vector<unsigned char>(kBatch));
  for (int k = 0; k < kBatches; ++k) {
    expected.push_back(Pattern(kBatch, k));
    ASSERT_TRUE(t.ToDeviceSync(Span(input), 0, expected.back().data(), kBatch, compute).ok());
    results.push_back(DeviceBuffer::Create(env.cache, kBatch, compute).value());
    // "Compute" batch k on the producer stream, then hand it to the pipeline.
    ASSERT_TRUE(t.DeviceToDevice(Span(results.back()), 0, Span(input), 0, kBatch, compute).ok());
    ASSERT_TRUE(pipeline->Submit(Span(results.back()), compute, outputs[k].data()).ok());
  }
  ASSERT_TRUE(pipeline->Finish().ok());
  for (int k = 0; k < kBatches; ++k) EXPECT_EQ(outputs[k], expected[k]) << "batch " << k;
  const PipelineStats& s = pipeline->stats();
  EXPECT_EQ(s.batches, static_cast<std::uint64_t>(kBatches));
  std::printf("staging pipeline: %llu batches, host waited %.2f ms, copied out %.2f ms\n",
              static_cast<unsigned long long>(s.batches), s.host_wait_s * 1e3, s.host_copy_s * 1e3);
  std::vector<unsigned char> too_big(kBatch * 2);
  DeviceBuffer big = DeviceBuffer::Create(env.cache, kBatch * 2, compute).value();
  EXPECT_FALSE(pipeline->Submit(Span(big), compute, too_big.data()).ok());
  pipeline.reset();
  // Its staging blocks went back while their copy stream still existed, so
  // the free could be ordered after the copies (found on a real GPU).
  EXPECT_EQ(pinned->stats().live_bytes, 0u) << "staging blocks left live";
  EXPECT_EQ(pinned->stats().host_waits, 0u);
  results.clear();
  input.Reset().IgnoreError();
  big.Reset().IgnoreError();
  ASSERT_TRUE(env.sim->DestroyStream(compute).ok());
}

}  // namespace
}  // namespace gpualloc

namespace gpualloc {
namespace {

// Bug: a completion whose event could not be destroyed (a lost device)
// dropped the error: the event leaked and nothing said so.
TEST(Transfers, ACompletionThatCannotDestroyItsEventSaysSo) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  auto faulty = std::make_shared<FailpointBackend>(sim, 1);
  const Stream s = sim->CreateStream(0).value();
  {
    absl::StatusOr<Completion> done = Completion::Record(faulty, s);
    ASSERT_TRUE(done.ok()) << done.status();
    ASSERT_TRUE(done->Wait().ok());
    faulty->AddRule(FaultRule::NthCall(BackendOp::kEventDestroy, 1, FaultAction::kReturnError));
    ::testing::internal::CaptureStderr();
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("could not destroy its event"), std::string::npos) << said;
  EXPECT_NE(said.find("event_destroy"), std::string::npos) << "names the failed call: " << said;
  EXPECT_EQ(sim->Accounting().live_events, 1u);
  ASSERT_TRUE(sim->DestroyStream(s).ok());
}

TEST(EventPool, ReusesItsEventsAndDestroysThemOnlyWithThePool) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  {
    EventPool events(sim, 0);
    Event a = events.Acquire().value();
    events.Recycle(a);
    EXPECT_EQ(events.spares(), 1u);
    Event b = events.Acquire().value();
    EXPECT_EQ(b.handle, a.handle);
    Event c = events.Acquire().value();
    EXPECT_NE(c.handle, a.handle);
    events.Recycle(b);
    events.Recycle(c);
    EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kEventCreate), 2u);
    EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kEventDestroy), 0u);
  }
  EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kEventDestroy), 2u);
  EXPECT_TRUE(sim->Accounting().AllReleased()) << sim->Accounting().Describe();
}

// Bug: Order recycled the event before the stream wait, or waited on the
// wrong stream: the second stream's kernel raced the first one's.
TEST(EventPool, OrderMakesTheSecondStreamWaitForTheFirstOnTheDevice) {
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 64 << 20));
  const Stream s1 = sim->CreateStream(0).value();
  const Stream s2 = sim->CreateStream(0).value();
  void* p = sim->Malloc(0, 4096).value();
  {
    EventPool events(sim, 0);
    for (int i = 0; i < 3; ++i) {  // one event, recorded again each time
      const Stream from = i % 2 == 0 ? s1 : s2;
      const Stream to = i % 2 == 0 ? s2 : s1;
      ASSERT_TRUE(sim->LaunchKernel(from, {{p, 4096, AccessMode::kWrite, 0}}, 1'000'000).ok());
      ASSERT_TRUE(events.Order(from, to).ok());
      ASSERT_TRUE(sim->LaunchKernel(to, {{p, 4096, AccessMode::kWrite, 0}}, 1'000).ok());
    }
    EXPECT_EQ(sim->Accounting().calls_to(BackendOp::kEventCreate), 1u);
    absl::Status st = sim->CheckStreamOrder();
    EXPECT_TRUE(st.ok()) << st;
    ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  }
  ASSERT_TRUE(sim->Free(0, p).ok());
  ASSERT_TRUE(sim->DestroyStream(s1).ok());
  ASSERT_TRUE(sim->DestroyStream(s2).ok());
}

}  // namespace
}  // namespace gpualloc

namespace gpualloc {
namespace {

TEST(Transfers, PeerCopiesMoveBytesBetweenDevicesInStreamOrder) {
  SimOptions o = SimOptions::WithDevices(3, 64 << 20);
  o.peer_links = std::vector<std::pair<int, int>>{{0, 1}};
  auto sim = std::make_shared<SimBackend>(o);
  std::shared_ptr<CachingAllocator> cache0 = CachingAllocator::Create(sim, 0, {}).value();
  std::shared_ptr<CachingAllocator> cache1 = CachingAllocator::Create(sim, 1, {}).value();
  Transfers t(sim);
  const Stream s0 = sim->CreateStream(0).value();
  const Stream s1 = sim->CreateStream(1).value();
  DeviceBuffer a = DeviceBuffer::Create(cache0, 100000, s0).value();
  DeviceBuffer b = DeviceBuffer::Create(cache1, 100000, s1).value();
  const std::vector<unsigned char> in = Pattern(100000, 3);
  ASSERT_TRUE(t.ToDeviceSync(Span(a), 0, in.data(), in.size(), s0).ok());
  // On device 1's stream, after device 0's upload (done: synchronous).
  Completion copied = t.PeerToPeer(Span(b), 0, Span(a), 0, in.size(), s1).value();
  ASSERT_TRUE(copied.Wait().ok());
  std::vector<unsigned char> out(in.size());
  ASSERT_TRUE(t.ToHostSync(out.data(), Span(b), 0, out.size(), s1).ok());
  EXPECT_EQ(out, in);
  // The source is read on device 1's stream: its free waits for that stream.
  ASSERT_TRUE(cache0->RecordStream(Allocation{a.data(), a.size(), s0}, s1).ok());
  // Bad input: a third device's stream, ranges past the end.
  const Stream s2 = sim->CreateStream(2).value();
  EXPECT_EQ(t.PeerToPeer(Span(b), 0, Span(a), 0, 10, s2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.PeerToPeer(Span(b), 99999, Span(a), 0, 2, s1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.PeerToPeer(Span(b), 0, Span(a), 99999, 2, s0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The topology: 0 and 1 linked both ways, 2 alone.
  EXPECT_TRUE(sim->CanAccessPeer(1, 0).value());
  EXPECT_FALSE(sim->CanAccessPeer(0, 2).value());
  EXPECT_EQ(sim->EnablePeerAccess(0, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(sim->EnablePeerAccess(0, 1).ok());
  EXPECT_TRUE(sim->EnablePeerAccess(0, 1).ok()) << "twice is no error";
  a.Reset().IgnoreError();
  b.Reset().IgnoreError();
  absl::Status order = sim->CheckStreamOrder();
  EXPECT_TRUE(order.ok()) << order;
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(1).ok());
  for (Stream s : {s0, s1, s2}) ASSERT_TRUE(sim->DestroyStream(s).ok());
}

}  // namespace
}  // namespace gpualloc
