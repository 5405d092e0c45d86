#include "allocator/bridge/ring_buffer_bridge.h"

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

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

struct Env {
  explicit Env(MemoryVisibility v) {
    sim = std::make_shared<SimBackend>(DeviceWith(v));
    faulty = std::make_shared<FailpointBackend>(sim, 1);
    cache = CachingAllocator::Create(sim, 0, {}).value();
    pinned = std::make_shared<PinnedHostAllocator>(sim);
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

}  // namespace
}  // namespace gpualloc
