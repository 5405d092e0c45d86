#include "allocator/bridge/ring_buffer_bridge.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "allocator/backend/failpoints/failpoint_backend.h"
#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/transfer/transfers.h"
#include "gtest/gtest.h"

namespace gpualloc {
namespace {

constexpr std::size_t kMessage = 32;
constexpr std::size_t kCapacity = 8;

using Message = std::array<unsigned char, kMessage>;

Message MessageOf(std::uint64_t i) {
  Message m;
  for (std::size_t b = 0; b < kMessage; ++b) m[b] = static_cast<unsigned char>(i * 31 + b);
  return m;
}

// A simulated device whose properties give `v`.
SimOptions DeviceWith(MemoryVisibility v) {
  SimOptions o = SimOptions::WithDevices(1, 64 << 20);
  if (v == MemoryVisibility::kDeviceScope) o.devices[0].concurrent_managed_access = false;
  if (v == MemoryVisibility::kExplicitDma) o.managed_memory = false;
  return o;
}

// Fails the k-th call of `op` (nullopt: of any runtime call) made from now
// on (1-based), once; the result says which operation it failed.
std::shared_ptr<std::optional<BackendOp>> FailTheKthCall(FailpointBackend& faulty, std::uint64_t k,
                                                          std::optional<BackendOp> op) {
  auto seen = std::make_shared<std::uint64_t>(0);
  auto failed = std::make_shared<std::optional<BackendOp>>();
  FaultRule rule = FaultRule::When(
      op,
      [seen, failed, k](const CallInfo& call) {
        if (++*seen != k) return false;
        *failed = call.op;
        return true;
      },
      FaultAction::kReturnError);
  rule.code = absl::StatusCode::kUnavailable;
  faulty.AddRule(std::move(rule));
  return failed;
}

// One run of a sweep: fail the k-th runtime call (op nullopt) or the k-th
// host access (op kHostAccess) of what the scene does under `strategy`.
struct Failure {
  TransferStrategy strategy;
  std::optional<BackendOp> op;
  std::uint64_t k = 1;
  bool fired = false;  // set by the scene when its fault fired
};

constexpr TransferStrategy kEveryStrategy[] = {TransferStrategy::kSync, TransferStrategy::kAsync,
                                               TransferStrategy::kDmaPolling,
                                               TransferStrategy::kUnified};

// Runs `scene(failure)` for each strategy, failing each runtime call and then
// each host access in turn (k = 1, 2, ...), until a run whose fault never
// fired. A scene that stops early (a failed ASSERT) leaves `fired` false and
// the sweep moves on.
template <typename Scene>
void SweepEachFailure(absl::Span<const TransferStrategy> strategies, Scene scene) {
  const std::optional<BackendOp> sweeps[] = {std::nullopt, BackendOp::kHostAccess};
  for (TransferStrategy strategy : strategies) {
    for (std::optional<BackendOp> op : sweeps) {
      for (std::uint64_t k = 1;; ++k) {
        SCOPED_TRACE(absl::StrCat(TransferStrategyName(strategy), ", failing ",
                                  op ? BackendOpName(*op) : "any runtime call", " #", k));
        Failure failure{strategy, op, k};
        scene(failure);
        if (!failure.fired) break;
      }
    }
  }
}

// Copies made through `faulty`, blocking or queued.
std::uint64_t Copies(const FailpointBackend& faulty) {
  return faulty.calls(BackendOp::kMemcpy) + faulty.calls(BackendOp::kMemcpyAsync);
}

constexpr std::size_t kRingBytes = RingBufferBridge::kHeaderBytes + kCapacity * kMessage;

struct Env {
  explicit Env(MemoryVisibility v) {
    sim = std::make_shared<SimBackend>(DeviceWith(v));
    faulty = std::make_shared<FailpointBackend>(sim, 1);
    cache = CachingAllocator::Create(sim, 0, {}).value();
    pinned = std::make_shared<PinnedHostAllocator>(faulty);
    stream = sim->CreateStream(0).value();
    visibility = DetectVisibility(*sim, 0, PlatformInfo{}).value();
  }
  ~Env() {
    sim->DeviceSynchronize(0).IgnoreError();
    sim->DestroyStream(stream).IgnoreError();
  }
  absl::StatusOr<std::unique_ptr<RingBufferBridge>> Bridge(TransferStrategy s) {
    BridgeOptions o;
    o.message_bytes = kMessage;
    o.capacity = kCapacity;
    o.strategy = s;
    return RingBufferBridge::Create(faulty, pinned, cache, stream, o, visibility);
  }
  // What a kernel reading the to-device ring would see, read in stream order.
  std::vector<unsigned char> DeviceRingBytes(const DeviceRing& r) {
    std::vector<unsigned char> out(RingBufferBridge::kHeaderBytes + r.capacity * r.message_bytes);
    EXPECT_TRUE(sim->MemcpyAsync(out.data(), r.header, out.size(), CopyKind::kDeviceToHost, stream).ok());
    EXPECT_TRUE(sim->SynchronizeStream(stream).ok());
    return out;
  }
  // A kernel that takes a while, then writes messages [from, to) and the
  // count to the to-host ring, all on the bridge's stream.
  void DeviceProduces(const DeviceRing& r, std::uint64_t from, std::uint64_t to) {
    ASSERT_TRUE(sim->LaunchKernel(stream, {{r.slots, r.capacity * r.message_bytes, AccessMode::kWrite, 0}},
                                  1'000'000, "producer")
                    .ok());
    for (std::uint64_t i = from; i < to; ++i) {
      const Message m = MessageOf(1000 + i);
      char* slot = static_cast<char*>(r.slots) + (i % r.capacity) * r.message_bytes;
      ASSERT_TRUE(sim->MemcpyAsync(slot, m.data(), kMessage, CopyKind::kHostToDevice, stream).ok());
      ASSERT_TRUE(sim->SynchronizeStream(stream).ok());  // the host buffer `m` goes away
    }
    ASSERT_TRUE(sim->MemcpyAsync(r.header, &to, sizeof(to), CopyKind::kHostToDevice, stream).ok());
    ASSERT_TRUE(sim->SynchronizeStream(stream).ok());
  }
  // A kernel reading the whole ring for `ns`: copies queued after it wait.
  void DeviceReads(const DeviceRing& r, std::int64_t ns) {
    ASSERT_TRUE(sim->LaunchKernel(stream, {{r.header, kRingBytes, AccessMode::kRead, 0}}, ns,
                                  "consumer")
                    .ok());
  }
  void ExpectStreamOrderHeld() {
    absl::Status st = sim->CheckStreamOrder();
    EXPECT_TRUE(st.ok()) << st;
  }
  std::shared_ptr<SimBackend> sim;
  std::shared_ptr<FailpointBackend> faulty;
  std::shared_ptr<CachingAllocator> cache;
  std::shared_ptr<PinnedHostAllocator> pinned;
  Stream stream;
  MemoryVisibility visibility;
};

class EveryStrategyUnderEveryVisibility
    : public ::testing::TestWithParam<std::tuple<TransferStrategy, MemoryVisibility>> {};

TEST_P(EveryStrategyUnderEveryVisibility, MessagesCrossBothWaysInStreamOrder) {
  const auto [strategy, visibility] = GetParam();
  Env env(visibility);
  ASSERT_EQ(env.visibility, visibility) << "the sim's properties give the visibility";
  absl::StatusOr<std::unique_ptr<RingBufferBridge>> made = env.Bridge(strategy);
  if (!StrategyWorksUnder(strategy, visibility)) {
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << made.status();
    return;
  }
  ASSERT_TRUE(made.ok()) << made.status();
  RingBufferBridge& bridge = **made;
  EXPECT_EQ(bridge.strategy(), strategy);
  const DeviceRing in = bridge.to_device();

  // Host to device, three flushes of five: the ring of 8 wraps twice.
  std::uint64_t next = 0;
  for (int round = 0; round < 3; ++round) {
    for (int k = 0; k < 5; ++k) {
      const Message m = MessageOf(next++);
      ASSERT_TRUE(bridge.Push(m.data()).ok());
    }
    // A kernel still reading the ring: the flush must come after it.
    ASSERT_TRUE(env.sim->LaunchKernel(env.stream, {{in.header, RingBufferBridge::kHeaderBytes +
                                                                   kCapacity * kMessage,
                                                    AccessMode::kRead, 0}},
                                      500'000, "consumer")
                    .ok());
    ASSERT_EQ(bridge.FlushToDevice().value(), 5u);
  }
  const std::vector<unsigned char> ring = env.DeviceRingBytes(in);
  std::uint64_t count = 0;
  std::memcpy(&count, ring.data(), sizeof(count));
  EXPECT_EQ(count, 15u);
  for (std::uint64_t i = 15 - kCapacity; i < 15; ++i) {
    const Message want = MessageOf(i);
    EXPECT_EQ(std::memcmp(ring.data() + RingBufferBridge::kHeaderBytes + (i % kCapacity) * kMessage,
                          want.data(), kMessage),
              0)
        << "message " << i;
  }
  EXPECT_EQ(bridge.FlushToDevice().value(), 0u) << "nothing pending";

  // Device to host: 6 messages, then 6 more across the wrap.
  const DeviceRing out = bridge.to_host();
  std::vector<Message> got;
  auto consume = [&](const void* p) {
    Message m;
    std::memcpy(m.data(), p, kMessage);
    got.push_back(m);
  };
  env.DeviceProduces(out, 0, 6);
  EXPECT_EQ(bridge.DrainToHost(consume).value(), 6u);
  env.DeviceProduces(out, 6, 12);
  EXPECT_EQ(bridge.DrainToHost(consume).value(), 6u);
  EXPECT_EQ(bridge.DrainToHost(consume).value(), 0u);
  ASSERT_EQ(got.size(), 12u);
  for (std::uint64_t i = 0; i < 12; ++i) EXPECT_EQ(got[i], MessageOf(1000 + i)) << i;

  BridgeStats st = bridge.stats();
  EXPECT_EQ(st.host_to_device, 15u);
  EXPECT_EQ(st.device_to_host, 12u);
  EXPECT_EQ(st.flushes, 3u);
  EXPECT_EQ(st.lost, 0u);
  if (strategy == TransferStrategy::kDmaPolling) {
    EXPECT_GT(st.polls, 0u);
  } else {
    EXPECT_EQ(st.polls, 0u) << "waited for in the runtime, not polled";
  }
  env.ExpectStreamOrderHeld();
}

INSTANTIATE_TEST_SUITE_P(
    Bridge, EveryStrategyUnderEveryVisibility,
    ::testing::Combine(::testing::Values(TransferStrategy::kSync, TransferStrategy::kAsync,
                                         TransferStrategy::kUnified, TransferStrategy::kDmaPolling),
                       ::testing::Values(MemoryVisibility::kSystemScope,
                                         MemoryVisibility::kDeviceScope,
                                         MemoryVisibility::kExplicitDma)),
    [](const auto& info) {
      std::string name = absl::StrCat(TransferStrategyName(std::get<0>(info.param)), "_",
                                      MemoryVisibilityName(std::get<1>(info.param)));
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      return name;
    });

TEST(RingBufferBridge, TheDefaultStrategyFollowsTheVisibility) {
  for (MemoryVisibility v : {MemoryVisibility::kSystemScope, MemoryVisibility::kDeviceScope,
                             MemoryVisibility::kExplicitDma}) {
    Env env(v);
    BridgeOptions o;
    auto bridge = RingBufferBridge::Create(env.sim, env.pinned, env.cache, env.stream, o, v).value();
    EXPECT_EQ(bridge->strategy(), DefaultStrategy(v));
    EXPECT_EQ(bridge->visibility(), v);
  }
}

// Bug: the loss check was off by one: a device exactly one message ahead of
// the ring had its overwritten slot delivered as if it were the oldest.
TEST(RingBufferBridge, ADeviceAFullRingAheadLosesNothingAndOneMoreLosesOne) {
  for (std::uint64_t ahead : {kCapacity, kCapacity + 1}) {
    SCOPED_TRACE(absl::StrCat(ahead, " messages ahead"));
    Env env(MemoryVisibility::kDeviceScope);
    auto bridge = env.Bridge(TransferStrategy::kAsync).value();
    env.DeviceProduces(bridge->to_host(), 0, ahead);
    std::vector<Message> got;
    absl::StatusOr<std::size_t> drained = bridge->DrainToHost([&](const void* p) {
      Message m;
      std::memcpy(m.data(), p, kMessage);
      got.push_back(m);
    });
    const std::uint64_t lost = ahead - kCapacity;
    if (lost == 0) {
      EXPECT_EQ(drained.value(), kCapacity);
    } else {
      EXPECT_EQ(drained.status().code(), absl::StatusCode::kDataLoss) << drained.status();
    }
    ASSERT_EQ(got.size(), kCapacity);
    for (std::uint64_t i = 0; i < kCapacity; ++i) {
      EXPECT_EQ(got[i], MessageOf(1000 + lost + i)) << i;
    }
    EXPECT_EQ(bridge->stats().lost, lost);
  }
}

TEST(RingBufferBridge, ADeviceThatOutrunsTheDrainLosesItsOldestMessagesAndSaysSo) {
  Env env(MemoryVisibility::kDeviceScope);
  auto bridge = env.Bridge(TransferStrategy::kAsync).value();
  env.DeviceProduces(bridge->to_host(), 0, kCapacity + 3);
  std::vector<Message> got;
  absl::StatusOr<std::size_t> drained = bridge->DrainToHost([&](const void* p) {
    Message m;
    std::memcpy(m.data(), p, kMessage);
    got.push_back(m);
  });
  EXPECT_EQ(drained.status().code(), absl::StatusCode::kDataLoss) << drained.status();
  ASSERT_EQ(got.size(), kCapacity) << "the newest capacity's worth";
  EXPECT_EQ(got.front(), MessageOf(1000 + 3));
  EXPECT_EQ(bridge->stats().lost, 3u);
  EXPECT_EQ(bridge->DrainToHost([](const void*) {}).value(), 0u) << "and it caught up";
}

TEST(RingBufferBridge, BadInputIsRefusedAndAFullQueueChangesNothing) {
  Env env(MemoryVisibility::kSystemScope);
  BridgeOptions o;
  o.message_bytes = 0;
  EXPECT_EQ(RingBufferBridge::Create(env.sim, env.pinned, env.cache, env.stream, o, env.visibility)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  o.message_bytes = ~std::size_t{0} / 2;
  o.capacity = 4;
  EXPECT_EQ(RingBufferBridge::Create(env.sim, env.pinned, env.cache, env.stream, o, env.visibility)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  o = BridgeOptions{};
  EXPECT_EQ(RingBufferBridge::Create(nullptr, env.pinned, env.cache, env.stream, o, env.visibility)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto bridge = env.Bridge(TransferStrategy::kAsync).value();
  EXPECT_EQ(bridge->Push(nullptr).code(), absl::StatusCode::kInvalidArgument);
  for (std::size_t i = 0; i < kCapacity; ++i) ASSERT_TRUE(bridge->Push(MessageOf(i).data()).ok());
  EXPECT_EQ(bridge->Push(MessageOf(99).data()).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(bridge->FlushToDevice().value(), kCapacity);
  std::uint64_t count = 0;
  const std::vector<unsigned char> ring = env.DeviceRingBytes(bridge->to_device());
  std::memcpy(&count, ring.data(), sizeof(count));
  EXPECT_EQ(count, kCapacity);
  for (std::uint64_t i = 0; i < kCapacity; ++i) {
    EXPECT_EQ(std::memcmp(ring.data() + RingBufferBridge::kHeaderBytes + i * kMessage,
                          MessageOf(i).data(), kMessage),
              0)
        << "a full ring's message " << i;
  }
}

// Bug: a failed copy lost the messages it was flushing, or published a count
// ahead of them.
TEST(RingBufferBridge, AFlushThatFailsKeepsItsMessagesForTheNextOne) {
  Env env(MemoryVisibility::kDeviceScope);
  auto bridge = env.Bridge(TransferStrategy::kAsync).value();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(bridge->Push(MessageOf(i).data()).ok());
  env.faulty->AddRule(FaultRule::NthCall(BackendOp::kMemcpyAsync,
                                         env.faulty->calls(BackendOp::kMemcpyAsync) + 2,
                                         FaultAction::kReturnError));
  EXPECT_FALSE(bridge->FlushToDevice().ok());
  env.faulty->ClearRules();
  std::vector<unsigned char> ring = env.DeviceRingBytes(bridge->to_device());
  std::uint64_t count = 0;
  std::memcpy(&count, ring.data(), sizeof(count));
  EXPECT_EQ(count, 0u) << "nothing published";
  ASSERT_TRUE(bridge->Push(MessageOf(3).data()).ok());
  EXPECT_EQ(bridge->FlushToDevice().value(), 4u);
  ring = env.DeviceRingBytes(bridge->to_device());
  std::memcpy(&count, ring.data(), sizeof(count));
  EXPECT_EQ(count, 4u);
  for (std::uint64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(std::memcmp(ring.data() + RingBufferBridge::kHeaderBytes + i * kMessage,
                          MessageOf(i).data(), kMessage),
              0);
  }
  env.ExpectStreamOrderHeld();
}

// Producers push from several threads while another flushes: every message
// arrives exactly once (TSan checks the locking).
TEST(RingBufferBridge, ThreadsPushingWhileAnotherFlushesLoseNothing) {
  Env env(MemoryVisibility::kDeviceScope);
  BridgeOptions o;
  o.message_bytes = 8;
  o.capacity = 4096;
  o.strategy = TransferStrategy::kAsync;
  auto bridge = RingBufferBridge::Create(env.sim, env.pinned, env.cache, env.stream, o,
                                         env.visibility)
                    .value();
  constexpr int kThreads = 3;
  constexpr int kEach = 300;
  std::atomic<int> done{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  // Beside them, a thread that drains (nothing comes back) and one that reads
  // the counters.
  std::atomic<bool> stop{false};
  std::thread drainer([&] {
    while (!stop.load()) EXPECT_EQ(bridge->DrainToHost([](const void*) {}).value(), 0u);
  });
  std::thread reader([&] {
    std::uint64_t last = 0;
    while (!stop.load()) {
      const BridgeStats now = bridge->stats();
      EXPECT_GE(now.host_to_device, last) << "the counters only grow";
      last = now.host_to_device;
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const std::uint64_t v = static_cast<std::uint64_t>(t) << 32 | static_cast<std::uint64_t>(i);
        while (!bridge->Push(&v).ok()) ++refused;  // full: the flusher catches up
      }
      ++done;
    });
  }
  std::size_t flushed = 0;
  while (done.load() < kThreads || flushed < std::size_t{kThreads * kEach}) {
    flushed += bridge->FlushToDevice().value();
  }
  for (std::thread& t : threads) t.join();
  stop = true;
  drainer.join();
  reader.join();
  EXPECT_EQ(flushed, std::size_t{kThreads * kEach});
  EXPECT_EQ(bridge->stats().host_to_device, std::uint64_t{kThreads * kEach});
  const std::vector<unsigned char> ring = env.DeviceRingBytes(bridge->to_device());
  std::uint64_t count = 0;
  std::memcpy(&count, ring.data(), sizeof(count));
  EXPECT_EQ(count, std::uint64_t{kThreads * kEach});
  std::vector<int> seen(kThreads, 0);
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t v = 0;
    std::memcpy(&v, ring.data() + RingBufferBridge::kHeaderBytes + i * 8, 8);
    const int t = static_cast<int>(v >> 32);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(static_cast<int>(v & 0xFFFFFFFF), seen[t]++) << "each thread's messages in order";
  }
  env.ExpectStreamOrderHeld();
}

// Bug: one of Create's checks dropped or done in unchecked arithmetic: a
// ring whose size wraps to a few bytes was made, and kernels wrote past it.
TEST(RingBufferBridge, CreateRefusesEachBadPartNamingTheBridge) {
  Env env(MemoryVisibility::kDeviceScope);
  auto create = [&](BridgeOptions o, std::shared_ptr<Backend> backend,
                    std::shared_ptr<PinnedHostAllocator> pinned,
                    std::shared_ptr<MemoryResource> memory) {
    o.strategy = TransferStrategy::kAsync;
    return RingBufferBridge::Create(backend, pinned, memory, env.stream, o, env.visibility)
        .status();
  };
  BridgeOptions good;
  good.message_bytes = kMessage;
  good.capacity = kCapacity;
  auto expect_refused = [](const absl::Status& st, absl::StatusCode code, const char* why) {
    EXPECT_EQ(st.code(), code) << why << ": " << st;
    EXPECT_NE(st.message().find("ring buffer bridge"), absl::string_view::npos)
        << why << ": " << st;
  };
  expect_refused(create(good, nullptr, env.pinned, env.cache), absl::StatusCode::kInvalidArgument,
                 "no backend");
  expect_refused(create(good, env.sim, nullptr, env.cache), absl::StatusCode::kInvalidArgument,
                 "no pinned allocator");
  expect_refused(create(good, env.sim, env.pinned, nullptr), absl::StatusCode::kInvalidArgument,
                 "no device memory");
  BridgeOptions o = good;
  o.capacity = 0;
  expect_refused(create(o, env.sim, env.pinned, env.cache), absl::StatusCode::kInvalidArgument,
                 "no slots");
  o = good;
  o.message_bytes = 0;
  expect_refused(create(o, env.sim, env.pinned, env.cache), absl::StatusCode::kInvalidArgument,
                 "empty messages");
  o = good;
  o.message_bytes = std::size_t{1} << 63;
  o.capacity = 2;  // the slots' size wraps to 0
  expect_refused(create(o, env.sim, env.pinned, env.cache), absl::StatusCode::kInvalidArgument,
                 "slots overflow");
  o = good;
  o.message_bytes = ~std::size_t{0} - 10;
  o.capacity = 1;  // the header wraps the ring's size to 53
  expect_refused(create(o, env.sim, env.pinned, env.cache), absl::StatusCode::kInvalidArgument,
                 "header overflows");
  // The queue of pushed messages cannot exist in host memory: refused at
  // the bridge, before any device memory is asked for.
  o = good;
  o.message_bytes = std::size_t{1} << 62;
  o.capacity = 2;
  const absl::Status huge = create(o, env.sim, env.pinned, env.cache);
  EXPECT_FALSE(huge.ok());
  EXPECT_NE(huge.message().find("ring buffer bridge"), absl::string_view::npos) << huge;
  EXPECT_EQ(env.cache->stats().reserved_bytes.current, 0);
  EXPECT_EQ(env.pinned->stats().reserved_bytes, 0u);
}

// Bug: a failed call while the rings were made was ignored, and the bridge
// came back with a header that was never zeroed; or the half-made bridge
// kept its memory.
TEST(RingBufferBridge, ACreateFailingAtAnyBackendCallReturnsTheErrorAndKeepsNoMemory) {
  const TransferStrategy strategies[] = {TransferStrategy::kAsync, TransferStrategy::kUnified};
  SweepEachFailure(strategies, [](Failure& f) {
    Env env(MemoryVisibility::kDeviceScope);
    const auto failed_op = FailTheKthCall(*env.faulty, f.k, f.op);
    absl::StatusOr<std::unique_ptr<RingBufferBridge>> made = env.Bridge(f.strategy);
    f.fired = env.faulty->faults_fired() > 0;
    env.faulty->ClearRules();
    if (f.fired && made.ok()) {
      // Absorbed by design: an allocation is retried (the allocators give
      // their caches back and try once more), and the pinned allocator
      // reads the current device only to name a block's owner.
      EXPECT_TRUE(*failed_op == BackendOp::kHostAlloc || *failed_op == BackendOp::kMalloc ||
                  *failed_op == BackendOp::kGetDevice)
          << "a failed " << BackendOpName(failed_op->value()) << " went unnoticed";
      return;
    }
    if (!f.fired) {
      ASSERT_TRUE(made.ok()) << made.status();
      // The rings are made, and their headers zeroed, through the
      // backend: by the host, in managed memory.
      if (!f.op || f.strategy == TransferStrategy::kUnified) {
        EXPECT_GT(f.k, 2u);
      }
      return;
    }
    EXPECT_EQ(made.status().code(), absl::StatusCode::kUnavailable) << made.status();
    ASSERT_TRUE(env.sim->SynchronizeStream(env.stream).ok());
    EXPECT_EQ(env.cache->stats().allocated_bytes.current, 0);
    EXPECT_EQ(env.pinned->stats().live_bytes, 0u);
    EXPECT_EQ(env.sim->Accounting().devices[0].managed_bytes, 0u);
  });
}

// Bug: a flush went on past a failed backend call (publishing a count ahead
// of its messages, or rewriting staging that queued copies still read, or
// counting a failed wait as done), or dropped the messages it was flushing.
TEST(RingBufferBridge, AFlushFailingAtAnyBackendCallPublishesNothingAndKeepsItsMessages) {
  SweepEachFailure(kEveryStrategy, [](Failure& f) {
    Env env(MemoryVisibility::kDeviceScope);
    auto bridge = env.Bridge(f.strategy).value();
    const DeviceRing in = bridge->to_device();
    // The first flush's copies stay queued behind a kernel while the
    // second flush runs.
    env.DeviceReads(in, 20'000'000);
    for (std::uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(bridge->Push(MessageOf(i).data()).ok());
    const std::uint64_t copies = Copies(*env.faulty);
    ASSERT_EQ(bridge->FlushToDevice().value(), 6u);
    EXPECT_EQ(Copies(*env.faulty) - copies, f.strategy == TransferStrategy::kUnified ? 0u : 2u)
        << "the slots in one run (the ring does not wrap), then the count";
    // The second flush wraps: slots 6 and 7, then 0 to 2.
    for (std::uint64_t i = 6; i < 11; ++i) ASSERT_TRUE(bridge->Push(MessageOf(i).data()).ok());
    FailTheKthCall(*env.faulty, f.k, f.op);
    absl::StatusOr<std::size_t> failed = bridge->FlushToDevice();
    f.fired = env.faulty->faults_fired() > 0;
    env.faulty->ClearRules();
    if (!f.fired) {
      ASSERT_EQ(failed.value(), 5u);
      EXPECT_GT(f.k, 1u) << "a flush makes backend calls";
      env.ExpectStreamOrderHeld();
      return;
    }
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
    ASSERT_EQ(bridge->FlushToDevice().value(), 5u) << "the messages wait for the next flush";
    const std::vector<unsigned char> ring = env.DeviceRingBytes(in);
    std::uint64_t count = 0;
    std::memcpy(&count, ring.data(), sizeof(count));
    EXPECT_EQ(count, 11u);
    for (std::uint64_t i = 11 - kCapacity; i < 11; ++i) {
      EXPECT_EQ(std::memcmp(ring.data() + RingBufferBridge::kHeaderBytes +
                                (i % kCapacity) * kMessage,
                            MessageOf(i).data(), kMessage),
                0)
          << "message " << i;
    }
    env.ExpectStreamOrderHeld();
  });
}

// Bug: a drain went on past a failed backend call and delivered stale
// staging, or moved past messages it never delivered.
TEST(RingBufferBridge, ADrainFailingAtAnyBackendCallDeliversNothingAndLosesNothing) {
  SweepEachFailure(kEveryStrategy, [](Failure& f) {
    Env env(MemoryVisibility::kDeviceScope);
    auto bridge = env.Bridge(f.strategy).value();
    std::vector<Message> got;
    auto consume = [&](const void* p) {
      Message m;
      std::memcpy(m.data(), p, kMessage);
      got.push_back(m);
    };
    env.DeviceProduces(bridge->to_host(), 0, 3);
    const std::uint64_t copies = Copies(*env.faulty);
    ASSERT_EQ(bridge->DrainToHost(consume).value(), 3u);
    EXPECT_EQ(Copies(*env.faulty) - copies, f.strategy == TransferStrategy::kUnified ? 0u : 2u)
        << "the count, then the slots in one run (the ring does not wrap)";
    env.DeviceProduces(bridge->to_host(), 3, 10);  // slots 3..7, then 0..1
    // A flush's copies are still queued when the drain begins.
    ASSERT_TRUE(bridge->Push(MessageOf(0).data()).ok());
    ASSERT_EQ(bridge->FlushToDevice().value(), 1u);
    const std::uint64_t records = env.faulty->calls(BackendOp::kEventRecord);
    FailTheKthCall(*env.faulty, f.k, f.op);
    absl::StatusOr<std::size_t> failed = bridge->DrainToHost(consume);
    f.fired = env.faulty->faults_fired() > 0;
    env.faulty->ClearRules();
    if (!f.fired) {
      ASSERT_EQ(failed.value(), 7u);
      const bool copies_queued = f.strategy == TransferStrategy::kAsync ||
                                 f.strategy == TransferStrategy::kDmaPolling;
      EXPECT_EQ(env.faulty->calls(BackendOp::kEventRecord) - records, copies_queued ? 3u : 0u)
          << "a wait for the flush's copies, one for the count, one for the slots";
    } else {
      EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
      // What it delivered before the failure stays delivered.
      const std::size_t delivered = got.size() - 3;
      ASSERT_EQ(bridge->DrainToHost(consume).value(), 7 - delivered) << "the rest, next time";
    }
    ASSERT_EQ(got.size(), 10u);
    for (std::uint64_t i = 0; i < 10; ++i) EXPECT_EQ(got[i], MessageOf(1000 + i)) << i;
    EXPECT_EQ(bridge->stats().lost, 0u);
    env.ExpectStreamOrderHeld();
    EXPECT_TRUE(f.fired || f.k > 1) << "a drain makes backend calls";
  });
}

// Bug: a consumer's exception was swallowed and the drain went on: the
// message it threw on was never delivered.
TEST(RingBufferBridge, AConsumerThatThrowsStopsTheDrainAndGetsTheRestNextTime) {
  Env env(MemoryVisibility::kDeviceScope);
  auto bridge = env.Bridge(TransferStrategy::kAsync).value();
  env.DeviceProduces(bridge->to_host(), 0, 5);
  std::vector<Message> got;
  bool thrown = false;
  auto consume = [&](const void* p) {
    if (got.size() == 2 && !thrown) {
      thrown = true;
      throw std::runtime_error("consumer gave up");
    }
    Message m;
    std::memcpy(m.data(), p, kMessage);
    got.push_back(m);
  };
  absl::StatusOr<std::size_t> first = bridge->DrainToHost(consume);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kInternal) << first.status();
  EXPECT_NE(first.status().message().find("consumer gave up"), absl::string_view::npos)
      << first.status();
  EXPECT_EQ(got.size(), 2u) << "the drain stopped at the throw";
  EXPECT_EQ(bridge->DrainToHost(consume).value(), 3u);
  ASSERT_EQ(got.size(), 5u);
  for (std::uint64_t i = 0; i < 5; ++i) EXPECT_EQ(got[i], MessageOf(1000 + i)) << i;
  EXPECT_EQ(bridge->stats().device_to_host, 5u);
}

// Bug: the poll loop spun without sleeping, burning a core for as long as
// the copies took.
TEST(RingBufferBridge, PollingWaitsThePollIntervalBetweenQueries) {
  Env env(MemoryVisibility::kExplicitDma);
  BridgeOptions o;
  o.message_bytes = kMessage;
  o.capacity = kCapacity;
  o.strategy = TransferStrategy::kDmaPolling;
  o.poll_interval = std::chrono::milliseconds(2);
  auto bridge =
      RingBufferBridge::Create(env.faulty, env.pinned, env.cache, env.stream, o, env.visibility)
          .value();
  // The drain's copy of the count waits behind a 30 ms kernel.
  ASSERT_TRUE(env.sim
                  ->LaunchKernel(env.stream,
                                 {{bridge->to_host().header, kRingBytes, AccessMode::kWrite, 0}},
                                 30'000'000, "producer")
                  .ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(bridge->DrainToHost([](const void*) {}).value(), 0u);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const std::uint64_t polls = bridge->stats().polls;
  EXPECT_GE(polls, 2u) << "the copy was still queued at the first query";
  // Every query but the last is followed by a sleep of at least the interval.
  EXPECT_LE(polls, 1 + static_cast<std::uint64_t>(elapsed / o.poll_interval))
      << std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count() << " us";
}

// Bug: the destructor freed the staging buffers with copies from them still
// queued: the pinned allocator handed them to the next caller, whose writes
// raced the copies.
TEST(RingBufferBridge, DestroyingTheBridgeWaitsForItsCopiesBeforeItsStagingIsReused) {
  Env env(MemoryVisibility::kDeviceScope);
  {
    auto bridge = env.Bridge(TransferStrategy::kAsync).value();
    env.DeviceReads(bridge->to_device(), 20'000'000);
    for (std::uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(bridge->Push(MessageOf(i).data()).ok());
    ASSERT_EQ(bridge->FlushToDevice().value(), 3u);  // copies queued behind the kernel
  }
  // The staging went back to the pinned allocator: the next owners write it.
  const std::vector<unsigned char> junk(kRingBytes, 0xEE);
  PinnedBuffer a = PinnedBuffer::Create(env.pinned, kRingBytes, 0).value();
  PinnedBuffer b = PinnedBuffer::Create(env.pinned, kRingBytes, 0).value();
  ASSERT_TRUE(a.HostWrite(0, junk.data(), kRingBytes).ok());
  ASSERT_TRUE(b.HostWrite(0, junk.data(), kRingBytes).ok());
  env.ExpectStreamOrderHeld();
}

}  // namespace
}  // namespace gpualloc
