// Compiled and run as a test; the [guide] region appears verbatim in
// docs/user-guide.md.
#include <memory>
#include <vector>

#include "allocator/backend/sim/sim_backend.h"
#include "allocator/caching/caching_allocator.h"
#include "allocator/transfer/transfers.h"
#include "gtest/gtest.h"

namespace {

TEST(GuideExample, PeerToPeer) {
  using namespace gpualloc;
  SimOptions options = SimOptions::WithDevices(2, 256 << 20);
  options.peer_links = std::vector<std::pair<int, int>>{{0, 1}};  // the sim's topology
  auto sim = std::make_shared<SimBackend>(options);
  std::shared_ptr<CachingAllocator> gpu0 = CachingAllocator::Create(sim, 0, {}).value();
  std::shared_ptr<CachingAllocator> gpu1 = CachingAllocator::Create(sim, 1, {}).value();
  Stream s0 = sim->CreateStream(0).value();
  Stream s1 = sim->CreateStream(1).value();
  // [guide]
  // Kernels on device 1 may use device 0's memory once peer access is on.
  if (sim->CanAccessPeer(1, 0).value()) {
    if (absl::Status st = sim->EnablePeerAccess(1, 0); !st.ok()) FAIL() << st;
  }
  Allocation weights = gpu0->Allocate(1 << 20, s0).value();
  DeviceBuffer replica = DeviceBuffer::Create(gpu1, 1 << 20, s1).value();

  // A copy between the devices, on device 1's stream (the runtime stages it
  // through the host where there is no link).
  Transfers transfers(sim);
  const DeviceSpan from{weights.ptr, weights.bytes, 0};
  Completion copied = transfers.PeerToPeer(Span(replica), 0, from, 0, 1 << 20, s1).value();

  // Device 1's stream still reads `weights`: tell its allocator, and the
  // free below waits for that stream like for any other.
  if (absl::Status st = gpu0->RecordStream(weights, s1); !st.ok()) FAIL() << st;
  if (absl::Status st = gpu0->Deallocate(weights, s0); !st.ok()) FAIL() << st;
  // [/guide]
  ASSERT_TRUE(copied.Wait().ok());
  replica.Reset().IgnoreError();
  EXPECT_TRUE(sim->CheckStreamOrder().ok());
  ASSERT_TRUE(sim->DeviceSynchronize(0).ok());
  ASSERT_TRUE(sim->DeviceSynchronize(1).ok());
  ASSERT_TRUE(sim->DestroyStream(s0).ok());
  ASSERT_TRUE(sim->DestroyStream(s1).ok());
}

}  // namespace
