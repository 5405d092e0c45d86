// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/bridge/memory_visibility.h"
#include "allocator/bridge/ring_buffer_bridge.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/host/pinned_host_allocator.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, MemoryVisibilityAndRingBufferBridge) {
  using namespace gpualloc;
  auto sim = std::make_shared<SimBackend>(SimOptions::WithDevices(1, 256 << 20));
  std::shared_ptr<CachingAllocator> cache = CachingAllocator::Create(sim, 0, {}).value();
  auto pinned = std::make_shared<PinnedHostAllocator>(sim);
  Stream stream = sim->CreateStream(0).value();
  // [guide]
  // What the platform and the device allow: WSL2 (told by /proc/version)
  // or a device without concurrent managed access needs explicit
  // synchronisation; without managed memory only copies cross.
  MemoryVisibility visibility = DetectVisibility(*sim, 0, DetectPlatform()).value();
  TransferStrategy strategy = DefaultStrategy(visibility);  // or choose one

  // Message rings between host and device: pushed messages reach the
  // device ring on Flush, in the order of `stream`; what kernels write to
  // the other ring comes back on Drain.
  BridgeOptions options;
  options.message_bytes = sizeof(std::uint64_t);
  options.capacity = 256;
  options.strategy = strategy;
  std::unique_ptr<RingBufferBridge> bridge =
      RingBufferBridge::Create(sim, pinned, cache, stream, options, visibility).value();
  for (std::uint64_t request = 1; request <= 3; ++request) {
    if (absl::Status st = bridge->Push(&request); !st.ok()) FAIL() << st;
  }
  EXPECT_EQ(bridge->FlushToDevice().value(), 3u);
  // ... kernels on `stream` read bridge->to_device() and write
  // bridge->to_host() (a 64-byte header whose first 8 bytes count the
  // messages written, then the slots) ...
  std::vector<std::uint64_t> replies;
  bridge->DrainToHost([&](const void* m) {
    std::uint64_t reply;
    std::memcpy(&reply, m, sizeof(reply));
    replies.push_back(reply);
  }).IgnoreError();
  EXPECT_EQ(bridge->stats().host_to_device, 3u);
  // [/guide]
  EXPECT_TRUE(replies.empty()) << "no kernel wrote replies here";
  bridge.reset();
  EXPECT_TRUE(sim->CheckStreamOrder().ok());
  ASSERT_TRUE(sim->DestroyStream(stream).ok());
}

}  // namespace
